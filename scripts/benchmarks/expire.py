"""Row 9, expire: the longest a concurrent writer waits while ``clear --expired`` deletes N
expired scores (1,000,000; 100,000 with ``--quick``), next to one big ``DELETE``.

A writer thread stores 50 fresh scores at a time, on its own connection, for as long as the
deletion runs; its slowest ``put_many`` is the wait. The same rows are deleted once the way
``expire`` did before (one transaction) and once as it does now (chunks, each its own
transaction).

Alone, from the repository root: ``python scripts/bench.py --only expire [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.expire [--quick]``.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import SEED, Context, KeyBuilder, Row, log, ms
from rerank_cache import ScoreCache

_MODEL = "gte-rerank-v2"


def _fill(cache: ScoreCache, entries: int, tag: str) -> None:
    rng = random.Random(SEED + 9)
    chunk = 50_000
    for start in range(0, entries, chunk):
        scores = {
            KeyBuilder(_MODEL, None, f"{tag} {i // 50}").key(f"doc {i}"): (rng.random())
            for i in range(start, min(start + chunk, entries))
        }
        cache.put_many(scores, model=_MODEL)


def _one_transaction(db: Path, later: float) -> int:
    """Delete every expired row in one transaction, as ``expire`` did before chunking."""
    con = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        n = con.execute(
            "DELETE FROM Cache WHERE expire_time IS NOT NULL AND expire_time <= ?", (later,)
        ).rowcount
        con.execute("COMMIT")
        return int(n)
    finally:
        con.close()


def _longest_wait(directory: Path, delete: Callable[[], int]) -> tuple[float, float, int]:
    """Run ``delete`` beside a writer; return the writer's longest put, the delete's time
    and how many rows it deleted."""
    done = threading.Event()
    waits: list[float] = []

    def writer() -> None:
        with ScoreCache(directory, ttl=3600) as cache:
            n = 0
            while not done.is_set():
                scores = {
                    KeyBuilder(_MODEL, None, "writer").key(f"w{n}-{i}"): 0.5 for i in range(50)
                }
                n += 1
                started = time.perf_counter()
                cache.put_many(scores, model=_MODEL)
                waits.append(time.perf_counter() - started)
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)  # the writer is up and writing
    started = time.perf_counter()
    deleted = delete()
    took = time.perf_counter() - started
    done.set()
    thread.join()
    return max(waits), took, deleted


def bench_expire(ctx: Context) -> list[Row]:
    """The longest wait of a concurrent writer while N expired scores are deleted."""
    entries = 100_000 if ctx.quick else 1_000_000
    rows: list[Row] = []
    for how in ("one transaction (before)", "chunks (now)"):
        directory = ctx.tmp / f"expire-{how.split()[0]}"
        log(f"expire: filling {entries:,} scores for {how}")
        with ScoreCache(directory, ttl=60, timeout=30.0) as cache:
            _fill(cache, entries, how)
            later = time.time() + 3600

            delete = (
                functools.partial(_one_transaction, directory / "cache.db", later)
                if how.startswith("one")
                else functools.partial(cache.expire, later)
            )
            wait, took, deleted = _longest_wait(directory, delete)
        met = wait < 1.0 if how.startswith("chunks") else None
        rows.append(
            Row(
                "9 expire",
                f"longest wait of a concurrent writer while {deleted:,} expired scores are "
                f"deleted, {how}; the deletion took {took:.1f} s",
                "< 1 s" if met is not None else "—",
                ms(wait),
                met,
                {"s": wait, "delete_s": took, "rows": deleted},
            )
        )
    return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "expire", *sys.argv[1:]]))
