"""arerank: the asyncio path shares the sync path's logic and never blocks the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dashscope.api_entities.aio_session import close_shared_aio_session
from freezegun import freeze_time

from rerank_cache import (
    APIError,
    AuthenticationError,
    CachedReRanker,
    Doc,
    MalformedResponseError,
    NoDocumentsError,
    QwenReRanker,
    RetryPolicy,
    ScoreCache,
)
from rerank_cache.keys import KeyBuilder
from rerank_cache.testing import DashScopeServer, score

from .helpers import API_KEY, make_docs, reranker_at

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(autouse=True)
async def _close_sdk_session() -> AsyncIterator[None]:
    """Close the SDK's per-loop aiohttp session so no connection outlives the test."""
    yield
    await close_shared_aio_session()


class AsyncSleeps:
    """Records the waits the async retry path asks for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def async_sleeps() -> AsyncSleeps:
    """A recorder for RetryPolicy(async_sleep=...)."""
    return AsyncSleeps()


@pytest.fixture
def make_async(
    make_reranker: Callable[..., QwenReRanker], async_sleeps: AsyncSleeps
) -> Callable[..., QwenReRanker]:
    """A reranker whose async retries record their waits instead of sleeping."""

    def make(*args: Any, **kwargs: Any) -> QwenReRanker:
        kwargs.setdefault("retry", RetryPolicy(async_sleep=async_sleeps, backoff_base=0.01))
        return make_reranker(*args, **kwargs)

    return make


async def test_arerank_equals_rerank(
    make_async: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """arerank gives exactly the documents and scores rerank gives."""
    docs = make_docs(40, seed=2)
    r = make_async()
    sync = r.rerank([docs], 15)
    async_ = await r.arerank([docs], 15)
    assert [(d.id, d.score) for d in async_] == [(d.id, d.score) for d in sync]
    assert await r.arerank([]) == []
    with pytest.raises(NoDocumentsError):
        await r.arerank([[Doc("x")]])


async def test_arerank_1200_docs_concurrent_within_limits(
    make_async: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """1,200 documents: several concurrent requests, each within limits, all scored."""
    docs = make_docs(1200, chars=400)
    out = await make_async("vector database").arerank([docs], 1200)
    assert len(out) == 1200
    assert all(d.score == score("vector database", d.field("content")) for d in out)
    assert len(server.requests_log) >= 3
    assert all(len(req.documents) <= 500 for req in server.requests_log)
    assert server.stats.max_in_flight >= 2


async def test_async_retry_after_then_success(
    make_async: Callable[..., QwenReRanker],
    server: DashScopeServer,
    async_sleeps: AsyncSleeps,
) -> None:
    """A 429 with Retry-After is waited out on the loop, then the retry succeeds."""
    server.fail_next(429, retry_after=2.5)
    server.fail_next(503)
    out = await make_async().arerank([make_docs(4)])
    assert len(out) == 4
    assert async_sleeps.waits[0] == 2.5
    assert len(async_sleeps.waits) == 2


async def test_async_errors_match_sync(
    make_async: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """400s, malformed bodies and dropped connections behave as in the sync path."""
    r = make_async()
    server.fail_next(400)
    with pytest.raises(APIError) as info:
        await r.arerank([make_docs(2)])
    assert info.value.status == 400
    for kind in ("missing_output", "nan_score", "fewer_results", "not_json"):
        server.malform_next(kind)
        with pytest.raises(MalformedResponseError):
            await r.arerank([make_docs(2)])
    server.drop_next(times=2)
    assert len(await r.arerank([make_docs(2)])) == 2


async def test_async_timeout_is_retried(
    make_async: Callable[..., QwenReRanker],
    server: DashScopeServer,
    async_sleeps: AsyncSleeps,
) -> None:
    """A response slower than the timeout is retried on the async path too."""
    server.delay_next(1.5)
    out = await make_async(timeout=0.3).arerank([make_docs(3)])
    assert len(out) == 3
    assert len(async_sleeps.waits) == 1


async def test_async_401_never_shows_key(server: DashScopeServer) -> None:
    """An async 401 is an AuthenticationError without the key."""
    with DashScopeServer(api_keys=["sk-right"]) as strict:
        r = reranker_at(strict.base_url, "q")
        with pytest.raises(AuthenticationError) as info:
            await r.arerank([make_docs(2)])
    assert API_KEY not in str(info.value) + repr(info.value)


async def test_cached_arerank_hits_and_partial_store(
    make_async: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Cached arerank sends only misses; the second identical call sends nothing."""
    r = CachedReRanker(make_async(), cache)
    docs = make_docs(30)
    first = await r.arerank([docs], 30)
    second = await r.arerank([docs], 30)
    assert [(d.id, d.score) for d in first] == [(d.id, d.score) for d in second]
    assert server.stats.documents == 30
    assert cache.stats().hits == 30
    assert r.rerank([docs], 30) == second  # the sync path reads what async wrote


async def test_tasks_single_flight(
    make_async: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Overlapping uncached pairs requested by several tasks at once are sent once."""
    server.latency = 0.2
    docs = make_docs(60, seed=9)
    r = CachedReRanker(make_async(), cache)
    results = await asyncio.gather(
        r.arerank([docs[:40]], 40), r.arerank([docs[20:]], 40), r.arerank([docs], 60)
    )
    sent = [d for req in server.requests_log for d in req.documents]
    assert len(sent) == len(set(sent)) == 60
    assert [len(x) for x in results] == [40, 40, 60]


async def test_cancelled_task_leaves_no_partial_entries(
    make_async: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Cancelling the task that owns a fetch writes nothing partial, and a task waiting on
    the same pairs still gets every score."""
    server.latency = 0.5
    docs = make_docs(20, seed=4)
    r = CachedReRanker(make_async(), cache)
    owner = asyncio.ensure_future(r.arerank([docs], 20))
    for _ in range(200):  # bounded: until the owner's request reaches the server
        if server.stats.requests:
            break
        await asyncio.sleep(0.01)
    assert server.stats.requests == 1
    waiter = asyncio.ensure_future(r.arerank([docs], 20))
    await asyncio.sleep(0.05)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    out = await asyncio.wait_for(waiter, timeout=10)
    assert len(out) == 20
    assert all(d.score == score(r.query, d.field("content")) for d in out)
    kb = KeyBuilder(r.model, None, r.query, scorer=r.scorer_id)
    stored = cache.get_many(kb.key(d.field("content")) for d in docs)
    assert len(stored) == 20  # written once, whole, by the waiter's request
    assert all(
        v == score(r.query, t)
        for t, v in ((d.field("content"), stored[kb.key(d.field("content"))]) for d in docs)
    )


async def test_event_loop_stays_responsive(
    make_async: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Other tasks run while a cold cached rerank waits on DashScope."""
    server.latency = 0.3
    r = CachedReRanker(make_async(), cache)
    task = asyncio.ensure_future(r.arerank([make_docs(2000, chars=200)], 5))
    ran_during_request = 0
    while not task.done():
        await asyncio.sleep(0.01)
        if server.stats.requests and not task.done():
            ran_during_request += 1
    assert len(await task) == 5
    assert ran_during_request >= 1


async def test_async_fallback(
    make_async: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """on_error='fallback' works on the async path and is counted."""
    server.fail_next(503, times=10)
    r = CachedReRanker(
        make_async(
            on_error="fallback", retry=RetryPolicy(async_sleep=AsyncSleeps(), max_attempts=2)
        ),
        cache,
    )
    docs = make_docs(5)
    out = await r.arerank([docs], 3)
    assert [d.id for d in out] == [d.id for d in docs[:3]]
    assert cache.stats().fallbacks == 1


async def test_tasks_share_the_owners_failure(
    make_async: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Tasks waiting on pairs whose fetch failed get that error, not a retry cycle each."""
    server.latency = 0.3
    server.fail_next(503, times=100)
    r = CachedReRanker(
        make_async(retry=RetryPolicy(async_sleep=AsyncSleeps(), max_attempts=2)), cache
    )
    docs = make_docs(5)
    outcomes = await asyncio.gather(*(r.arerank([docs]) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, APIError) and o.status == 503 for o in outcomes), outcomes
    assert server.stats.requests == 2  # one owner, two attempts


async def test_async_on_error_stale(
    tmp_path: Path,
    make_async: Callable[..., QwenReRanker],
    server: DashScopeServer,
    async_sleeps: AsyncSleeps,
) -> None:
    """on_error='stale' works on the async path: kept scores are served and counted, and a
    miss without one raises."""
    docs = make_docs(6)
    with ScoreCache(tmp_path / "scores", ttl=3600, stale_ttl=86400) as store:
        r = CachedReRanker(make_async(), store, on_error="stale")
        with freeze_time(datetime.now(timezone.utc) - timedelta(hours=2)):
            first = r.rerank([docs[:5]], 5)  # written two hours ago: expired, kept
        server.fail_next(503, times=4)
        out = await r.arerank([docs[:5]], 5)
        assert [(d.id, d.score) for d in out] == [(d.id, d.score) for d in first]
        assert store.stats().stale_served == 5
        server.fail_next(503, times=4)
        with pytest.raises(APIError):
            await r.arerank([docs], 6)
        assert store.stats().stale_served == 5
