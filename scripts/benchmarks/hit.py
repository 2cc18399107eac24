"""Row 1, the hit path: ``CachedReRanker.rerank`` of all-cached candidates against the raw
floor, side by side in one loop.

The floor is the same for every reader: xxh3-128 of the candidates' texts plus one raw
``sqlite3`` ``SELECT key, value FROM Cache WHERE key IN (...) AND (expire_time IS NULL OR
expire_time > ?)`` on the same file, on a connection of its own (not our read path). Measured:
100 candidates with the default store (memory tier on), 100 with ``memory_entries=0``, and
1,000 with ``memory_entries=0``, each against the floor of its own candidates, plus a
breakdown of the 100-candidate ``memory_entries=0`` call.

Alone, from the repository root: ``python scripts/bench.py --only hit [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.hit [--quick]``.
"""

from __future__ import annotations

import gc
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import xxhash

from benchmarks.common import (
    FIELD,
    HIT_QUERY,
    MODEL,
    SEED,
    Context,
    KeyBuilder,
    Row,
    assemble,
    local_server,
    ms,
    percentile,
    reranker_for,
)
from rerank_cache import RetryPolicy, ScoreCache

_FLOOR_SQL = (
    "SELECT key, value FROM Cache WHERE key IN ({}) AND (expire_time IS NULL OR expire_time > ?)"
)


def _floor(texts: list[str], keys: list[str], con: sqlite3.Connection) -> Callable[[], Any]:
    """xxh3-128 of the texts plus one raw SELECT of their keys: what any cache must do."""
    sql = _FLOOR_SQL.format(",".join("?" * len(keys)))
    digest = xxhash.xxh3_128_digest

    def floor() -> Any:
        [digest(t.encode()) for t in texts]
        return con.execute(sql, (*keys, time.time())).fetchall()

    return floor


def bench_hit(ctx: Context) -> list[Row]:
    """All-hit reranks of 100 and 1,000 candidates, next to the raw floor."""
    iterations = 1_000 if ctx.quick else 5_000
    rng = random.Random(SEED + 1)
    distinct = ctx.corpus.distinct()
    big_docs = ctx.corpus.docs(rng.sample(distinct, min(1_000, len(distinct))))
    docs = big_docs[:100]
    texts = [d.fields[FIELD] for d in docs]
    big_texts = [d.fields[FIELD] for d in big_docs]
    lengths = [len(t) for t in texts]
    query = HIT_QUERY
    with (
        ScoreCache(ctx.tmp / "hit") as cache,
        ScoreCache(ctx.tmp / "hit", memory_entries=0) as plain,
    ):
        with local_server() as server:
            # No retries: were anything sent once the server is gone, it fails at once.
            retry = RetryPolicy(max_attempts=1)
            fast = reranker_for(server.base_url, cache, retry=retry).with_query(query)
            lean = reranker_for(server.base_url, plain, retry=retry).with_query(query)
            lean.rerank([big_docs])  # fill the store: every later call is all hits
            fast.rerank([docs])  # and the default store's memory tier
        # The server is stopped while timing: its polling thread would compete for the
        # GIL, and any document sent from here on would raise instead of going unnoticed.
        builder = KeyBuilder(MODEL, None, query, scorer=lean.scorer_id)
        keys = [builder.key(t) for t in texts]
        big_keys = [builder.key(t) for t in big_texts]
        con = sqlite3.connect(ctx.tmp / "hit" / "cache.db")
        floor, big_floor = _floor(texts, keys, con), _floor(big_texts, big_keys, con)
        assert len(floor()) == 100, "all 100 should be cached"
        assert len(big_floor()) == len(big_docs), "all 1,000 should be cached"

        collected = lean.prepare([docs])
        scores = lean.score_texts(collected.texts).scores

        def keys_step() -> None:
            b = KeyBuilder(MODEL, None, query, scorer=lean.scorer_id)
            [b.key(t) for t in collected.texts]

        timed: dict[str, Callable[[], object]] = {
            "default": lambda: fast.rerank([docs]),
            "floor": floor,
            "plain": lambda: lean.rerank([docs]),
            "big": lambda: lean.rerank([big_docs]),
            "big floor": big_floor,
        }
        steps: dict[str, Callable[[], object]] = {
            "prepare / collect (dedup, field read, prepare_text)": lambda: lean.prepare([docs]),
            "key derivation (KeyBuilder + xxhash, 100 keys)": keys_step,
            "get_many, memory_entries=0 (one batched read of 100 keys)": lambda: plain.get_many(
                keys
            ),
            "assemble (top 10, _replace)": lambda: assemble(collected.candidates, scores, 10),
        }
        for fn in (*timed.values(), *steps.values()):
            for _ in range(200):
                fn()
        gc.collect()
        samples: dict[str, list[float]] = {name: [] for name in (*timed, *steps)}
        clock = time.perf_counter
        big_every = 5  # 1,000 candidates take ten times as long: sample them less often
        for i in range(iterations):  # interleaved, so load from elsewhere hits all alike
            for name, fn in (*timed.items(), *steps.items()):
                if name.startswith("big") and i % big_every:
                    continue
                t0 = clock()
                fn()
                samples[name].append(clock() - t0)
        con.close()
    med = {name: statistics.median(values) for name, values in samples.items()}
    p99 = percentile(samples["default"], 0.99)
    floor_p99 = percentile(samples["floor"], 0.99)
    ratio = med["default"] / med["floor"]
    plain_ratio = med["plain"] / med["floor"]
    big_ratio = med["big"] / med["big floor"]
    section = "1 hit path"
    rows = [
        Row(
            section,
            f"rerank, 100 cached candidates ({min(lengths)}-{max(lengths)} chars), default "
            f"store, median of {iterations:,}",
            "< 1 ms",
            ms(med["default"]),
            med["default"] < 0.001,
            {"median_s": med["default"], "p99_s": p99},
        ),
        Row(section, "rerank p99", "—", ms(p99)),
        Row(
            section,
            "floor: xxh3-128 x100 + one raw sqlite3 SELECT ... IN, same file (median / p99)",
            "—",
            f"{ms(med['floor'])} / {ms(floor_p99)}",
            None,
            {"median_s": med["floor"], "p99_s": floor_p99},
        ),
        Row(section, "rerank median / floor median", "<= 1.0x", f"{ratio:.2f}x", ratio <= 1.0),
        Row(
            section,
            f"memory_entries=0: rerank {ms(med['plain'])} / floor",
            "<= 1.6x",
            f"{plain_ratio:.2f}x",
            plain_ratio <= 1.6,
            {"median_s": med["plain"]},
        ),
        Row(
            section,
            f"1,000 candidates, memory_entries=0: rerank {ms(med['big'])} / floor "
            f"{ms(med['big floor'])}",
            "<= 1.3x",
            f"{big_ratio:.2f}x",
            big_ratio <= 1.3,
            {"median_s": med["big"], "floor_median_s": med["big floor"]},
        ),
    ]
    accounted = 0.0
    for name in steps:
        accounted += med[name]
        rows.append(Row(section, f"breakdown: {name}", "—", ms(med[name])))
    rows.append(
        Row(
            section,
            "breakdown: rest (hit/miss split, counters, call overhead) = median - steps",
            "—",
            ms(med["plain"] - accounted),
        )
    )
    return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "hit", *sys.argv[1:]]))
