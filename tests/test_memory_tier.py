"""The memory tier itself (``rerank_cache.stores.memory``): bound, expiry, generations and
threads. How both stores use it is in the memory-tier part of ``test_store_contract.py``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rerank_cache import ScoreCache
from rerank_cache.stores.memory import MemoryTier

from .helpers import run_threads


def test_lookup_splits_live_scores_from_the_rest() -> None:
    tier = MemoryTier(10)
    tier.store({"a": (0.5, None), "b": (0.25, 100.0), "c": (1.0, 50.0)}, tier.generation)
    assert tier.lookup(["c", "a", "x", "b"], now=50.0) == ({"a": 0.5, "b": 0.25}, ["c", "x"])


def test_the_oldest_stored_go_first_and_a_rewrite_is_new() -> None:
    tier = MemoryTier(3)
    tier.store({"a": (1.0, None), "b": (2.0, None), "c": (3.0, None)}, None)
    tier.store({"a": (1.5, None)}, None)  # rewritten: now the newest
    tier.store({"d": (4.0, None)}, None)
    assert len(tier) == 3
    assert tier.lookup(["a", "b", "c", "d"], 0.0) == ({"a": 1.5, "c": 3.0, "d": 4.0}, ["b"])
    tier.store({str(i): (float(i), None) for i in range(10)}, None)  # more than fit at once
    assert tier.lookup(["6", "7", "8", "9", "d"], 0.0) == (
        {"7": 7.0, "8": 8.0, "9": 9.0},
        ["6", "d"],
    )


def test_a_new_generation_forgets_and_refuses_reads_from_the_old_one() -> None:
    tier = MemoryTier(10)
    tier.store({"a": (1.0, None)}, None)
    assert tier.observe(None) is False
    assert tier.observe((1, 2, 3)) is True
    assert tier.lookup(["a"], 0.0) == ({}, ["a"])
    tier.store({"b": (2.0, None)}, None)  # read before the clear was seen: not kept
    tier.store({"c": (3.0, None)}, (1, 2, 3))
    assert tier.lookup(["b", "c"], 0.0) == ({"c": 3.0}, ["b"])
    tier.forget()
    assert len(tier) == 0


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_the_bound_is_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        MemoryTier(bad)  # type: ignore[arg-type]


def test_threads_share_one_bounded_consistent_tier() -> None:
    """Writers, readers and clears at once: never over the bound, never a wrong score."""
    tier = MemoryTier(500)
    wrong: list[tuple[str, float]] = []

    def work(i: int) -> None:
        for round_ in range(200):
            batch = {f"{i}:{j}": (float(j), math.inf) for j in range(round_ % 50)}
            tier.store(batch, tier.generation)
            found, _ = tier.lookup(list(batch), 0.0)
            wrong.extend((k, v) for k, v in found.items() if v != float(k.split(":")[1]))
            assert len(tier) <= 500
            if i == 0 and round_ % 20 == 0:
                tier.observe(round_)

    assert run_threads(8, work) == []
    assert wrong == []
    assert len(tier) <= 500


def test_threads_on_one_store_read_what_was_written(tmp_path: Path) -> None:
    """Threads writing and reading one ScoreCache each see their own scores, bounded."""
    with ScoreCache(tmp_path / "scores", memory_entries=100) as store:

        def work(i: int) -> None:
            for round_ in range(20):
                scores = {f"2:m:{i:02d}{round_:02d}{j:028d}": j / 7 for j in range(10)}
                assert store.put_many(scores, model="m")
                assert store.get_many(list(scores)) == scores

        assert run_threads(6, work) == []
        assert store.memory_entries == 100
        assert store.count() == 6 * 20 * 10
