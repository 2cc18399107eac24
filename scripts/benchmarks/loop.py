"""Row 8, event-loop lag while ``arerank`` scores 2,000 uncached documents (300 ms
server latency, server in a child process), next to the blocking ``rerank`` called inside
the loop.

Alone, from the repository root: ``python scripts/bench.py --only loop [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.loop [--quick]``.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    SEED,
    Context,
    Row,
    ServerProcess,
    ms,
    percentile,
    reranker_for,
)
from rerank_cache import Doc, ScoreCache


async def _lag_during(work: Callable[[], Any], tick: float = 0.001) -> tuple[list[float], float]:
    """Run ``work`` (a coroutine function) while a ticker measures how late it wakes."""
    import asyncio

    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - started - tick)

    probe = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    try:
        await work()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await probe
    return lags, elapsed


def bench_loop(ctx: Context) -> list[Row]:
    """Event-loop lag while ``arerank`` scores 2,000 uncached documents (300 ms latency),
    next to the same rerank done with the blocking ``rerank`` inside the loop."""
    import asyncio

    from rerank_cache import close_async_sessions

    section = "8 event loop"
    rows: list[Row] = []
    rng = random.Random(SEED + 8)
    distinct = ctx.corpus.distinct()
    with ServerProcess(latency=0.3) as server:
        for label, use_async in (("arerank (async)", True), ("rerank (blocking)", False)):
            docs = ctx.corpus.docs(rng.sample(distinct, min(2_000, len(distinct))))
            with ScoreCache(ctx.tmp / f"loop-{use_async}") as cache:
                reranker = reranker_for(server.base_url, cache).with_query(
                    f"event loop probe {label}"
                )

                async def work(r: Any = reranker, d: list[Doc] = docs, a: bool = use_async) -> None:
                    if a:
                        await r.arerank([d], 10)
                    else:
                        r.rerank([d], 10)

                async def run(
                    w: Callable[[], Any] = work, r: Any = reranker, d: list[Doc] = docs
                ) -> tuple[list[float], float]:
                    try:
                        # Warm up as a running service would be: SDK imported, TLS ready.
                        await r.with_query("warm-up").arerank([d[:1]], 1)
                        return await _lag_during(w)
                    finally:
                        await close_async_sessions()

                lags, elapsed = asyncio.run(run())
            worst = max(lags) if lags else elapsed
            target = "max lag < 50 ms" if use_async else "—"
            met = worst < 0.05 if use_async else None
            rows.append(
                Row(
                    section,
                    f"{label}: 2,000 uncached docs, loop lag max / p99 (ticks)",
                    target,
                    f"{ms(worst)} / {ms(percentile(lags, 0.99) if lags else elapsed)} "
                    f"({len(lags)} ticks in {ms(elapsed)})",
                    met,
                    {"max_lag_s": worst, "ticks": len(lags), "elapsed_s": elapsed},
                )
            )
    return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "loop", *sys.argv[1:]]))
