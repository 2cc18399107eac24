"""The caching layer: CachedReRanker sends only uncached pairs, in step with its scorer.

Store behaviour both stores share is in ``test_store_contract.py``; these tests drive the
layer over a disk store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from rerank_cache import (
    APIError,
    BatchResult,
    CachedReRanker,
    Doc,
    QwenReRanker,
    RetryPolicy,
    ScoreCache,
)
from rerank_cache.keys import KeyBuilder
from rerank_cache.planning import plan_batches
from rerank_cache.testing import DashScopeServer, score

from .helpers import API_KEY, SleepRecorder, cached, make_docs, run_threads


def planned(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, docs: list[Doc], workers: int
) -> tuple[CachedReRanker, tuple[str, ...], list[list[int]]]:
    """A cached reranker sending up to ``workers`` requests at once, the texts a rerank of
    ``docs`` scores, and the groups of them it sends as requests."""
    r = cached(make_reranker, cache, max_concurrency=workers)
    texts = r.prepare([docs]).texts
    return r, texts, plan_batches(r.query, texts, r.reranker.limits)


def test_results_identical_to_uncached(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """Cached and uncached reranking return the same documents in the same order."""
    docs = make_docs(50, seed=3)
    plain = make_reranker().rerank([docs], 10)
    r = cached(make_reranker, cache)
    r.rerank([docs[:25]], 10)  # half warm
    mixed = r.rerank([docs], 10)
    assert [(d.id, d.score) for d in plain] == [(d.id, d.score) for d in mixed]


def test_model_instruct_and_query_are_in_the_key(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Changing model, instruct or query misses; the same settings hit."""
    docs = make_docs(5)
    cached(make_reranker, cache, model="qwen3-rerank").rerank([docs])
    cached(make_reranker, cache, model="qwen3-rerank").rerank([docs])
    assert server.stats.requests == 1
    cached(make_reranker, cache, model="gte-rerank-v2").rerank([docs])
    assert server.stats.requests == 2
    cached(make_reranker, cache, model="qwen3-rerank", instruct="Rank it.").rerank([docs])
    assert server.stats.requests == 3
    cached(make_reranker, cache, "another query", model="qwen3-rerank").rerank([docs])
    assert server.stats.requests == 4


def test_partial_failure_keeps_completed_requests(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """When request 3 of 4 fails, the scores of the requests that succeeded are kept."""
    docs = make_docs(1600, chars=400, seed=7)
    r, texts, groups = planned(make_reranker, cache, docs, workers=1)
    assert len(groups) >= 4
    poison = texts[groups[2][0]]
    server.fail_next(400, match=poison)
    with pytest.raises(APIError):
        r.rerank([docs])
    stored = cache.stats().entries
    assert stored >= len(groups[0]) + len(groups[1])
    server.reset_stats()
    r.rerank([docs], 5)
    assert server.stats.documents == len(texts) - stored


def test_each_request_is_stored_as_it_completes(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """A fast request's scores are stored while a slow one is still in flight."""
    r, texts, groups = planned(make_reranker, cache, make_docs(450, chars=400, seed=21), workers=3)
    assert len(groups) == 3
    slow_text = texts[groups[0][0]]
    server.delay_next(1.0, match=slow_text)
    kb = KeyBuilder(r.model, None, r.query, scorer=r.scorer_id)
    seen: list[tuple[int, int, int]] = []  # (requests answered, batch size, batch in store)

    def on_batch(batch: BatchResult) -> None:
        stored = cache.get_many([kb.key(t) for t in batch.texts])
        seen.append((len(server.requests_log), len(batch.texts), len(stored)))

    r.score_texts(texts, on_batch=on_batch)
    assert len(seen) == 3
    answered, size, in_store = seen[0]
    assert answered < 3  # the slow request was still in flight ...
    assert in_store == size  # ... and the first batch was already in the store


def test_malformed_response_is_never_cached(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """A malformed 200 caches nothing; the next call fetches real scores."""
    r = cached(make_reranker, cache)
    server.malform_next("nan_score")
    with pytest.raises(Exception, match="nothing was cached"):
        r.rerank([make_docs(5)])
    assert cache.stats().entries == 0
    out = r.rerank([make_docs(5)], 5)
    assert all(d.score == score(r.query, d.field("content")) for d in out)


def test_two_threads_single_flight(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Two threads reranking overlapping uncached pairs at once send each pair once."""
    server.latency = 0.3
    docs = make_docs(60, seed=5)
    sets = [docs[:40], docs[20:60]]
    r = cached(make_reranker, cache)
    barrier = threading.Barrier(2)
    results: list[list[Doc]] = [[], []]

    def work(i: int) -> None:
        barrier.wait(timeout=5)
        results[i] = r.with_query(r.query).rerank([sets[i]], 40)

    assert not run_threads(2, work)
    sent = [d for req in server.requests_log for d in req.documents]
    assert len(sent) == len(set(sent)) == 60
    for i in range(2):
        assert len(results[i]) == 40
        assert all(d.score == score(r.query, d.field("content")) for d in results[i])


class _CountingCache(ScoreCache):
    """A ScoreCache that counts reads and can hold one thread right after its first read."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.reads = 0
        self.hold: str | None = None  # the name of the thread to hold
        self.held = threading.Event()
        self.release = threading.Event()

    def get_many(self, keys: Sequence[str]) -> dict[str, float]:
        found = super().get_many(keys)
        self.reads += 1
        if threading.current_thread().name == self.hold:
            self.hold = None
            self.held.set()
            self.release.wait(10)
        return found


def test_a_pair_stored_between_first_read_and_claim_is_not_sent_again(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """A thread that missed pairs, then claims them after another thread sent, stored and
    released them, reads them again instead of sending them twice."""
    with _CountingCache(tmp_path / "scores") as cache:
        r = cached(make_reranker, cache)
        docs = make_docs(6)
        cache.hold = "late"
        results: list[list[Doc]] = []
        late = threading.Thread(
            target=lambda: results.append(r.rerank([docs], 6)), name="late", daemon=True
        )
        late.start()
        assert cache.held.wait(10)  # "late" read its misses and has claimed nothing yet
        r.with_query(r.query).rerank([docs])  # sends, stores and releases the six pairs
        cache.release.set()
        late.join(10)
        assert server.stats.requests == 1
        assert [d.score for d in results[0]] == sorted(
            (score(r.query, d.field("content")) for d in docs), reverse=True
        )


def test_waiters_share_the_owners_failure(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    sleeps: SleepRecorder,
) -> None:
    """During an outage, threads waiting on the same pairs get the owner's error instead of
    each repeating the whole retry cycle."""
    server.latency = 0.3
    server.fail_next(503, times=100)
    r = cached(make_reranker, cache, retry=RetryPolicy(sleep=sleeps, max_attempts=2))
    docs = make_docs(5)
    barrier = threading.Barrier(4)

    def work(_: int) -> None:
        barrier.wait(timeout=5)
        r.with_query(r.query).rerank([docs])

    outcomes = run_threads(4, work)
    assert len(outcomes) == 4  # every thread raised
    assert all(isinstance(o, APIError) and o.status == 503 for o in outcomes), outcomes
    assert server.stats.requests == 2  # one owner, two attempts; the others waited


def test_with_query_shares_cache_and_client(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """with_query copies share the cache: the same (query, docs) is fetched once."""
    r = cached(make_reranker, cache)
    r.with_query("alpha").rerank([make_docs(5)])
    r.with_query("alpha").rerank([make_docs(5)])
    assert server.stats.requests == 1
    copy = r.with_query("beta")
    assert (copy.cache, copy.topn, copy.rerank_field) == (cache, r.topn, r.rerank_field)
    assert copy.usage == r.usage  # the underlying client is shared


def test_cached_reranker_mirrors_properties(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """The wrapper exposes the wrapped reranker's properties."""
    inner = make_reranker("q", topn=4, model="qwen3-rerank", instruct="x y")
    r = CachedReRanker(inner, cache)
    assert (r.query, r.topn, r.rerank_field, r.model, r.instruct) == (
        "q",
        4,
        "content",
        "qwen3-rerank",
        "x y",
    )
    assert r.base_url == inner.base_url
    assert API_KEY not in repr(r)


def test_cached_one_liner_uses_default_directory(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """QwenReRanker(...).cached() caches in RERANK_CACHE_DIR."""
    r = make_reranker().cached()
    try:
        r.rerank([make_docs(3)])
        r.rerank([make_docs(3)])
        assert server.stats.requests == 1
        assert r.cache.directory == tmp_path / "default-cache"
    finally:
        r.cache.close()


def test_cached_one_liner_honours_cache_url(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With RERANK_CACHE_URL set, .cached() opens the store it names."""
    monkeypatch.setenv("RERANK_CACHE_URL", f"file://{tmp_path / 'by-url'}")
    r = make_reranker().cached()
    try:
        assert r.cache.directory == tmp_path / "by-url"  # type: ignore[attr-defined]
    finally:
        r.close()


def test_caching_layers_stack(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """A cache in front of another cache: hits from the inner one fill the outer one."""
    docs = make_docs(6)
    with ScoreCache(tmp_path / "shared") as shared, ScoreCache(tmp_path / "local") as local:
        inner = CachedReRanker(make_reranker(), shared)
        inner.rerank([docs[:4]])  # the shared store holds 4 of the 6 pairs
        outer = CachedReRanker(inner, local)
        first = outer.rerank([docs], 6)
        assert server.stats.documents == 6  # 4 earlier + only the 2 new ones
        assert local.stats().entries == 6
        server.reset_stats()
        assert outer.rerank([docs], 6) == first
        assert server.stats.requests == 0
