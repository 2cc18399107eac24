"""Benchmarks of rerank-cache against the local DashScope server; prints a markdown table.

The entry point behind ``scripts/bench.py``: picks the rows (``--only``), runs them in one
temporary directory on one seeded corpus, and prints the machine description and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import cold, expire, hit, loop, processes, redis_hit, serve, stats, traffic, warm
from benchmarks.common import SEED, Context, Row, log
from benchmarks.report import machine, table
from benchmarks.workload import make_corpus

BENCHES: dict[str, Callable[[Context], list[Row]]] = {
    "hit": hit.bench_hit,
    "traffic": traffic.bench_traffic,
    "cold": cold.bench_cold,
    "processes": processes.bench_processes,
    "warm": warm.bench_warm,
    "stats": stats.bench_stats,
    "redis": redis_hit.bench_redis,
    "loop": loop.bench_loop,
    "expire": expire.bench_expire,
    "serve": serve.bench_serve,
}
NAMES = tuple(BENCHES)


def only_local_traffic() -> None:
    """Make sure no proxy sits between us and 127.0.0.1 (requests honours NO_PROXY)."""
    for name in ("NO_PROXY", "no_proxy"):
        current = [p for p in os.environ.get(name, "").split(",") if p]
        os.environ[name] = ",".join([*current, "127.0.0.1", "localhost"])
    for name in ("DASHSCOPE_HTTP_BASE_URL", "DASHSCOPE_API_KEY"):
        os.environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; print the machine description and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; under a minute")
    parser.add_argument(
        "--only",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"run only this measurement (repeatable): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--serve-duration",
        type=float,
        metavar="SECONDS",
        help="seconds per phase of the serve row (default 20, --quick 3)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = parser.parse_args(argv)
    only_local_traffic()
    names = [n for n in NAMES if not args.only or n in args.only]
    info = machine()
    print("## Machine\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print()
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rerank-cache-bench-") as tmp:
        corpus = make_corpus(4_000, SEED)
        ctx = Context(
            quick=args.quick, tmp=Path(tmp), corpus=corpus, serve_duration=args.serve_duration
        )
        for name in names:
            log(f"{name} ...")
            t0 = time.perf_counter()
            rows += BENCHES[name](ctx)
            log(f"{name} done in {time.perf_counter() - t0:.1f} s")
    total = time.perf_counter() - started
    mode = "quick" if args.quick else "full"
    try:
        load = ", load average at end " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = ""
    print(f"## Results ({mode} run, {total:.0f} s{load})\n")
    print(table(rows))
    missed = [r for r in rows if r.met is False]
    print(f"\n{len(missed)} target(s) missed." if missed else "\nAll targets met.")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "mode": mode,
                    "seconds": total,
                    "rows": [r.__dict__ for r in rows],
                },
                indent=2,
            )
        )
    return 0
