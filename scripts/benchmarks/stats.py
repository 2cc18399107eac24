"""Row 6, stats: ``rerank-cache stats`` on a one-million-entry cache (100,000 with
``--quick``), built once in ``$TMPDIR`` and reused, with where its time goes.

Alone, from the repository root: ``python scripts/bench.py --only stats [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.stats [--quick]``.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    SEED,
    Context,
    KeyBuilder,
    Row,
    child_env,
    log,
)
from rerank_cache import ScoreCache, read_stats


def build_big_cache(directory: Path, entries: int) -> float | None:
    """Fill ``directory`` with ``entries`` scores through put_many unless already there.

    Keys are deterministic (three models, 50 documents per query), so an interrupted build
    is completed by the next run. Returns the build time, or None if nothing was built.
    """
    models = ("gte-rerank-v2",) * 7 + ("qwen3-rerank",) * 2 + ("qwen3-vl-rerank",)
    with ScoreCache(directory) as cache:
        if read_stats(directory).entries >= entries:
            return None
        if cache.count():  # scores under an older key format: stats would count none of them
            cache.clear()
        log(f"building a {entries:,}-entry cache in {directory} (once; reused later)")
        started = time.perf_counter()
        rng = random.Random(SEED + 6)
        chunk = 50_000
        for start in range(0, entries, chunk):
            by_model: dict[str, dict[str, float]] = {}
            for i in range(start, min(start + chunk, entries)):
                query = i // 50
                model = models[query % len(models)]
                key = KeyBuilder(model, None, f"query {query}").key(f"doc {i}")
                by_model.setdefault(model, {})[key] = rng.random()
            for model, scores in by_model.items():
                cache.put_many(
                    scores,
                    model=model,
                    api_requests=len(scores) // 50,
                    documents_sent=len(scores),
                    tokens_billed=len(scores) * 140,
                )
            log(f"  {min(start + chunk, entries):,} entries")
        return time.perf_counter() - started


def import_costs(env: dict[str, str]) -> list[tuple[str, float]]:
    """What ``import rerank_cache.cli`` spends, by package (from ``-X importtime``).

    Each package is charged the cumulative time of its outermost imports, so a package
    imported by another (aiohttp by dashscope) counts under both; sorted, largest first.
    """
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import rerank_cache.cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    entries = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            entries.append((depth, name.strip().split(".")[0], int(parts[1]) / 1e6))
    costs: dict[str, float] = {}
    stack: list[tuple[int, str]] = []
    for depth, package, seconds in reversed(entries):  # parents before children
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if package not in {p for _, p in stack}:
            costs[package] = costs.get(package, 0.0) + seconds
        stack.append((depth, package))
    return sorted(costs.items(), key=lambda item: -item[1])


def bench_stats(ctx: Context) -> list[Row]:
    """``rerank-cache stats`` on a one-million-entry cache (100k in --quick)."""
    entries = 100_000 if ctx.quick else 1_000_000
    name = "1m" if entries == 1_000_000 else f"{entries // 1000}k"
    directory = Path(tempfile.gettempdir()) / f"rerank-cache-bench-{name}"
    built = build_big_cache(directory, entries)
    env = child_env()
    command = [sys.executable, "-m", "rerank_cache", "--cache-dir", str(directory), "stats"]
    bare = [sys.executable, "-c", "import rerank_cache.cli"]
    walls: list[float] = []
    imports: list[float] = []
    for attempt in range(6):  # interleaved; the first round warms the page cache, not counted
        for args, into in ((command, walls), (bare, imports)):
            started = time.perf_counter()
            proc = subprocess.run(
                args, capture_output=True, text=True, env=env, timeout=120, check=False
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"{args} exited {proc.returncode}: {proc.stderr[-2000:]}")
            if attempt:
                into.append(wall)
    reads = []
    for _ in range(3):
        started = time.perf_counter()
        stats = read_stats(directory)
        reads.append(time.perf_counter() - started)
    wall = statistics.median(walls)
    top = ", ".join(f"{package} {seconds:.2f} s" for package, seconds in import_costs(env)[:5])
    section = "6 stats"
    size = stats.size_bytes / 1e6
    note = f"; built in {built:.0f} s" if built is not None else ""
    return [
        Row(
            section,
            f"`rerank-cache stats` on {stats.entries:,} entries ({size:,.0f} MB{note}), "
            "median of 5",
            "< 2 s",
            f"{wall:.2f} s",
            wall < 2.0,
            {"s": wall, "entries": stats.entries},
        ),
        Row(
            section,
            "of which: process start + `import rerank_cache.cli` (median of 5, interleaved)",
            "—",
            f"{statistics.median(imports):.2f} s (-X importtime: {top})",
        ),
        Row(
            section,
            "of which: read_stats() in-process (the SQL), median of 3",
            "—",
            f"{statistics.median(reads):.2f} s",
        ),
    ]


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "stats", *sys.argv[1:]]))
