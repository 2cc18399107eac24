"""The report: the machine description printed above the results, and the markdown table."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT, Row


def met_text(met: bool | None) -> str:
    """The "met?" cell."""
    return "—" if met is None else ("yes" if met else "**no**")


def table(rows: Sequence[Row]) -> str:
    """Render rows as a markdown table."""
    lines = [
        "| measurement | | target | measured | met? |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.section} | {r.name} | {r.target} | {r.measured} | {met_text(r.met)} |" for r in rows
    ]
    return "\n".join(lines)


def _git(*args: str) -> str:
    """Output of a git command on this checkout, stripped."""
    return subprocess.run(
        ["git", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def machine() -> dict[str, str]:
    """CPU, cores, RAM, Python, SQLite and package versions."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in ("rerank-cache", "dashscope", "diskcache", "xxhash", "pydantic", "zvec"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        commit = out + (" (with uncommitted changes)" if dirty else "")
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "RAM": ram,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "SQLite": sqlite3.sqlite_version,
        "packages": ", ".join(versions),
        "commit": commit,
        "load average at start (1/5/15 min)": load,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
