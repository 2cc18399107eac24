"""The benchmark script runs from a checkout and its traffic measurement holds to the floor.

Only counts are asserted here (documents sent next to the floor); timings never are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"
TABLE_HEADER = "| measurement | | target | measured | met? |"


def _run_bench(args: list[str], cwd: Path) -> tuple[str, list[dict[str, Any]]]:
    """Run a benchmark command with ``scripts/`` importable; its stdout and its JSON rows."""
    report = cwd / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    # For `python -m benchmarks.<row>`; `scripts/bench.py` finds the package on its own.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "scripts"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, *args, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows: list[dict[str, Any]] = json.loads(report.read_text())["rows"]
    return proc.stdout, rows


@pytest.mark.slow
def test_quick_traffic_prints_table_and_sends_exactly_the_floor(tmp_path: Path) -> None:
    """`bench.py --quick --only traffic` prints the table; this project sends only unique pairs."""
    stdout, rows = _run_bench([str(BENCH), "--quick", "--only", "traffic"], tmp_path)
    assert TABLE_HEADER in stdout
    [project_line] = [line for line in stdout.splitlines() if "sent by this project" in line]
    assert project_line.startswith("| 2 API traffic |")
    assert project_line.rstrip().endswith("| yes |")

    [workload] = [r for r in rows if r["name"].startswith("workload:")]
    [project] = [r for r in rows if r["name"].startswith("sent by this project")]
    assert workload["data"]["queries"] >= 200
    assert project["data"]["documents"] == workload["data"]["floor_documents"]
    assert project["data"]["tokens"] == workload["data"]["floor_tokens"]
    assert project["met"] is True


@pytest.mark.slow
def test_one_row_runs_alone_as_its_module(tmp_path: Path) -> None:
    """`python -m benchmarks.hit --quick` runs the hit-path row and no other."""
    stdout, rows = _run_bench(["-m", "benchmarks.hit", "--quick"], tmp_path)
    assert TABLE_HEADER in stdout
    assert {r["section"] for r in rows} == {"1 hit path"}
    names = [r["name"] for r in rows]
    assert names[0].endswith("median of 1,000")  # the --quick iteration count
    assert sum(name.startswith("breakdown: ") for name in names) == 5
    assert "rerank median / floor median" in names


@pytest.mark.slow
def test_quick_serve_row_answers_every_request_through_the_proxy(tmp_path: Path) -> None:
    """`bench.py --quick --only serve`: both phases run and the proxy answers all with 200."""
    stdout, rows = _run_bench([str(BENCH), "--quick", "--only", "serve"], tmp_path)
    assert TABLE_HEADER in stdout
    assert {r["section"] for r in rows} == {"10 caching proxy"}
    phases = [r for r in rows if "requests" in r["data"]]
    assert [r["name"].split(" ", 1)[0] for r in phases] == ["all-hit", "mixed"]
    for row in phases:
        assert row["data"]["requests"] > 0
        assert row["data"]["errors"] == 0
        assert len(row["data"]["rss_mib"]) >= 2  # sampled at the start and once a second
