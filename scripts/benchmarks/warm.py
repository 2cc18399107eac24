"""Row 5, warming: ``rerank-cache warm`` on JSONL files of three sizes (10k, 100k and 1M
pairs; 1k, 10k and 100k with ``--quick``); pairs per second and peak RSS of the child.

Alone, from the repository root: ``python scripts/bench.py --only warm [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.warm [--quick]``.
"""

from __future__ import annotations

import json
import random
import sys
import textwrap
from pathlib import Path

from benchmarks.common import (
    SEED,
    SUBPROCESS_TIMEOUT,
    Context,
    Row,
    child_env,
    local_server,
    mb,
    run_measuring_rss,
)
from benchmarks.workload import Corpus


def write_warm_file(path: Path, corpus: Corpus, pairs: int, seed: int) -> None:
    """A JSONL query log: one query per line with 100 candidate texts (all pairs unique)."""
    rng = random.Random(seed)
    unique = list(dict.fromkeys(corpus.texts))  # mirrored pages share a text
    with path.open("w", encoding="utf-8") as out:
        for line in range(pairs // 100):
            topic = rng.choice(corpus.topic_words)
            query = f"warm query {line}: " + " ".join(rng.sample(topic, 4))
            texts = rng.sample(unique, 100)
            out.write(json.dumps({"query": query, "documents": texts}) + "\n")


# Runs the CLI's main() and, at exit, reports the process's memory split (Linux):
# RssAnon is heap (Python objects, SQLite page caches), RssFile is file-backed pages
# (shared libraries and the memory-mapped cache.db).
_WARM_CHILD = textwrap.dedent(
    """
    import re, sys
    from rerank_cache.cli import main
    code = main(sys.argv[1:])
    try:
        status = open("/proc/self/status").read()
    except OSError:
        status = ""
    print("MEMORY " + " ".join(
        name + "=" + value.split()[0]
        for name, value in re.findall(r"^(VmHWM|RssAnon|RssFile):(.*)$", status, re.M)
    ), file=sys.stderr)
    sys.exit(code)
    """
)


def bench_warm(ctx: Context) -> list[Row]:
    """``rerank-cache warm`` on JSONL files of three sizes: pairs/s and peak RSS."""
    sizes = (1_000, 10_000, 100_000) if ctx.quick else (10_000, 100_000, 1_000_000)
    section = "5 warming"
    results = {}
    with local_server() as server:
        for size in sizes:
            source = ctx.tmp / f"warm-{size}.jsonl"
            write_warm_file(source, ctx.corpus, size, SEED + 5 + size)
            file_mb = source.stat().st_size / 1e6
            cache_dir = ctx.tmp / f"warm-cache-{size}"
            args = ["--cache-dir", str(cache_dir), "warm", str(source), "--json"]
            code, out, err, rss_kib, wall = run_measuring_rss(
                [sys.executable, "-c", _WARM_CHILD, *args],
                child_env(server),
                SUBPROCESS_TIMEOUT,
            )
            if code != 0:
                raise RuntimeError(f"rerank-cache warm exited {code}: {err[-2000:]}")
            summary = json.loads(out)
            assert summary["scored"] == size, summary
            memory: dict[str, int] = {}
            for line in err.splitlines():
                if line.startswith("MEMORY "):
                    memory = {k: int(v) for k, v in (p.split("=") for p in line.split()[1:])}
            peak = memory.get("VmHWM", rss_kib)  # wait4's figure includes the fork instant
            results[size] = (summary, peak, wall, file_mb, memory)
            source.unlink()
    small, middle, large = sizes
    _s_small, rss_small, _, _, mem_small = results[small]
    rss_middle = results[middle][1]
    s_large, rss_large, wall_large, mb_large, mem_large = results[large]
    rate = s_large["scored"] / s_large["elapsed"]
    peaks = (rss_small, rss_middle, rss_large)
    spread_mb = (max(peaks) - min(peaks)) * 1024 / 1e6
    rows = [
        Row(
            section,
            f"rerank-cache warm, {large:,} pairs ({large // 100:,} lines x 100 docs, "
            f"{mb_large:.0f} MB JSONL), concurrency 4: pairs/s",
            "—",
            f"{rate:,.0f} pairs/s ({s_large['elapsed']:.1f} s; {wall_large:.1f} s with "
            "process start)",
            None,
            {"pairs_per_s": rate},
        ),
        Row(
            section,
            f"peak RSS (the child's VmHWM) at {small:,} / {middle:,} / {large:,} pairs",
            "flat (within 10 MB), < 100 MB",
            f"{mb(rss_small)} / {mb(rss_middle)} / {mb(rss_large)} (spread {spread_mb:.1f} MB)",
            spread_mb <= 10 and max(peaks) * 1024 < 100e6,
            {"rss_small_kib": rss_small, "rss_middle_kib": rss_middle, "rss_large_kib": rss_large},
        ),
    ]
    if mem_small and mem_large:
        anon = mem_large["RssAnon"] / mem_small["RssAnon"]
        rows.append(
            Row(
                section,
                f"flat? memory at exit, {small:,} vs {large:,} pairs: heap (RssAnon) / "
                "file-backed (RssFile: libraries + mmap'd cache.db)",
                "heap flat (< 1.2x)",
                f"heap {mb(mem_small['RssAnon'])} vs {mb(mem_large['RssAnon'])} ({anon:.2f}x); "
                f"file-backed {mb(mem_small['RssFile'])} vs {mb(mem_large['RssFile'])}",
                anon < 1.2,
                {"anon_growth": anon},
            )
        )
    return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "warm", *sys.argv[1:]]))
