"""Row 1, the hit path: ``CachedReRanker.rerank`` on 100 cached candidates next to
the floor measured on the same store (xxhash of the 100 texts plus one
``ScoreCache.get_many``), with a breakdown of the steps.

Alone, from the repository root: ``python scripts/bench.py --only hit [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.hit [--quick]``.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks.common import (
    FIELD,
    HIT_QUERY,
    MODEL,
    SEED,
    Context,
    KeyBuilder,
    Row,
    assemble,
    doc_hash,
    local_server,
    ms,
    percentile,
    reranker_for,
)
from rerank_cache import RetryPolicy, ScoreCache


def bench_hit(ctx: Context) -> list[Row]:
    """``CachedReRanker.rerank`` on 100 cached candidates, next to the floor."""
    iterations = 1_000 if ctx.quick else 5_000
    rng = random.Random(SEED + 1)
    distinct = ctx.corpus.distinct()
    docs = ctx.corpus.docs(rng.sample(distinct, 100))
    results = [docs]
    texts = [d.fields[FIELD] for d in docs]
    lengths = [len(t) for t in texts]
    query = HIT_QUERY
    with ScoreCache(ctx.tmp / "hit") as cache:
        with local_server() as server:
            # No retries: were anything sent once the server is gone, it fails at once.
            reranker = reranker_for(server.base_url, cache, retry=RetryPolicy(max_attempts=1))
            reranker = reranker.with_query(query)
            reranker.rerank(results)  # fill the cache: every later call is all hits
        # The server is stopped while timing: its polling thread would compete for the
        # GIL, and any document sent from here on would raise instead of going unnoticed.
        builder = KeyBuilder(MODEL, None, query, scorer=reranker.scorer_id)
        keys = [builder.key(t) for t in texts]
        assert len(cache.get_many(keys)) == 100, "the cache should hold all 100 scores"

        def floor() -> None:
            [doc_hash(t) for t in texts]
            cache.get_many(keys)

        def full() -> None:
            reranker.rerank(results)

        collected = reranker.prepare(results)
        scores = reranker.score_texts(collected.texts).scores

        def keys_step() -> None:
            b = KeyBuilder(MODEL, None, query, scorer=reranker.scorer_id)
            [b.key(t) for t in collected.texts]

        steps: dict[str, Callable[[], object]] = {
            "prepare / collect (dedup, field read, prepare_text)": lambda: reranker.prepare(
                results
            ),
            "key derivation (KeyBuilder + xxhash, 100 keys)": keys_step,
            "get_many (one batched read of 100 keys)": lambda: cache.get_many(keys),
            "assemble (sort, top 10, _replace)": lambda: assemble(collected.candidates, scores, 10),
        }
        for fn in (full, floor, *steps.values()):
            for _ in range(200):
                fn()
        gc.collect()
        full_t: list[float] = []
        floor_t: list[float] = []
        step_samples: dict[str, list[float]] = {name: [] for name in steps}
        clock = time.perf_counter
        for _ in range(iterations):  # interleaved, so load from elsewhere hits all alike
            t0 = clock()
            full()
            t1 = clock()
            floor()
            t2 = clock()
            full_t.append(t1 - t0)
            floor_t.append(t2 - t1)
            for name, fn in steps.items():
                t0 = clock()
                fn()
                step_samples[name].append(clock() - t0)
        step_t = {name: statistics.median(samples) for name, samples in step_samples.items()}
    med, p99 = statistics.median(full_t), percentile(full_t, 0.99)
    floor_med, floor_p99 = statistics.median(floor_t), percentile(floor_t, 0.99)
    ratio = med / floor_med
    section = "1 hit path"
    rows = [
        Row(
            section,
            f"rerank, 100 cached candidates ({min(lengths)}-{max(lengths)} chars), "
            f"median of {iterations:,}",
            "< 1 ms",
            ms(med),
            med < 0.001,
            {"median_s": med, "p99_s": p99},
        ),
        Row(section, "rerank p99", "—", ms(p99)),
        Row(
            section,
            "floor: doc_hash x100 + get_many, same store (median / p99)",
            "—",
            f"{ms(floor_med)} / {ms(floor_p99)}",
            None,
            {"median_s": floor_med, "p99_s": floor_p99},
        ),
        Row(section, "rerank median / floor median", "<= 2.0x", f"{ratio:.2f}x", ratio <= 2.0),
    ]
    accounted = 0.0
    for name, value in step_t.items():
        accounted += value
        rows.append(Row(section, f"breakdown: {name}", "—", ms(value)))
    rows.append(
        Row(
            section,
            "breakdown: rest (hit/miss split, counters, call overhead) = median - steps",
            "—",
            ms(med - accounted),
        )
    )
    return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "hit", *sys.argv[1:]]))
