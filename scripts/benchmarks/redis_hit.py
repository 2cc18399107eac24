"""Row 7, the hit path on Redis: 100 cached candidates on a private ``redis-server`` next
to diskcache, same run (skipped with a note when redis-server or redis-py is missing).

Alone, from the repository root: ``python scripts/bench.py --only redis [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.redis_hit [--quick]``.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.common import (
    HIT_QUERY,
    SEED,
    Context,
    Row,
    local_server,
    ms,
    percentile,
    reranker_for,
)
from rerank_cache import ScoreCache


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A private redis-server on 127.0.0.1 (no persistence); its URL, or None if absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start within 10 s")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def bench_redis(ctx: Context) -> list[Row]:
    """The hit path (100 cached candidates) on Redis next to diskcache, same run."""
    section = "7 hit path, Redis"
    iterations = 1_000 if ctx.quick else 5_000
    rng = random.Random(SEED + 7)
    distinct = ctx.corpus.distinct()
    results = [ctx.corpus.docs(rng.sample(distinct, 100))]
    query = HIT_QUERY
    with redis_server() as url:
        if url is None:
            return [
                Row(
                    section,
                    "CachedReRanker.rerank, 100 cached",
                    "—",
                    "skipped: redis-server not installed",
                )
            ]
        try:
            from rerank_cache import RedisScoreCache
        except ImportError:
            return [
                Row(
                    section,
                    "CachedReRanker.rerank, 100 cached",
                    "—",
                    "skipped: redis-py not installed (pip install 'rerank-cache[redis]')",
                )
            ]
        medians: dict[str, float] = {}
        rows: list[Row] = []
        stores: list[tuple[str, Any]] = [
            ("diskcache", ScoreCache(ctx.tmp / "redis-vs-disk")),
            ("Redis (127.0.0.1)", RedisScoreCache(url)),
        ]
        for label, store in stores:
            with store, local_server() as server:
                reranker = reranker_for(server.base_url, store).with_query(query)
                reranker.rerank(results)  # fill: every later call is all hits
                sent = server.stats.documents
                samples = []
                for _ in range(iterations):
                    started = time.perf_counter()
                    reranker.rerank(results)
                    samples.append(time.perf_counter() - started)
                assert server.stats.documents == sent, "the hit path sent documents"
            medians[label] = statistics.median(samples)
            rows.append(
                Row(
                    section,
                    f"CachedReRanker.rerank, 100 cached, {label} (median / p99)",
                    "—",
                    f"{ms(medians[label])} / {ms(percentile(samples, 0.99))}",
                    None,
                    {"median_s": medians[label], "p99_s": percentile(samples, 0.99)},
                )
            )
        ratio = medians["Redis (127.0.0.1)"] / medians["diskcache"]
        rows.append(Row(section, "Redis median / diskcache median", "—", f"{ratio:.2f}x"))
        return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "redis", *sys.argv[1:]]))
