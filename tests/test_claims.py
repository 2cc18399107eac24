"""Claims on in-flight pairs: processes sharing a disk store with ``claims=True`` send each
pair once; a dead claimer's keys are taken over after the lease; claims off changes nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from dashscope.api_entities.aio_session import close_shared_aio_session
from freezegun import freeze_time

from rerank_cache import CachedReRanker, CacheStats, ConfigurationError, QwenReRanker, ScoreCache
from rerank_cache.stores.claims import DiskClaims, wait_for_claimed
from rerank_cache.stores.open import open_store
from rerank_cache.stores.redis import RedisScoreCache
from rerank_cache.stores.redis_claims import RedisClaims
from rerank_cache.testing import DashScopeServer

from .helpers import API_KEY, SRC, pair_keys, pairs_sent
from .redis_fixture import RedisServer

TEXTS = [f"document number {i} about vector databases" for i in range(12)]


def test_claims_off_by_default(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """A CachedReRanker claims nothing unless asked, and its copies neither."""
    reranker = CachedReRanker(make_reranker(), cache)
    assert reranker.claims is None
    assert reranker.with_query("other").claims is None


class _ThirdPartyStore:
    """A store of someone else's making: the request path of a ScoreCache, and no claims."""

    def __init__(self, inner: ScoreCache) -> None:
        self.inner = inner

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        return self.inner.get_many(keys)

    def get_stale_many(self, keys: Iterable[str]) -> dict[str, float]:
        return self.inner.get_stale_many(keys)

    def put_many(self, scores: Mapping[str, float], *, model: str, **usage: Any) -> bool:
        return self.inner.put_many(scores, model=model, **usage)

    def record_lookup(self, model: str, *, hits: int, misses: int, purpose: Any = "app") -> None:
        self.inner.record_lookup(model, hits=hits, misses=misses, purpose=purpose)

    def record_stale(self, model: str, served: int) -> None:
        self.inner.record_stale(model, served)

    def record_fallback(self, model: str) -> None:
        self.inner.record_fallback(model)

    def stats(self) -> CacheStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


def test_claims_need_a_store_with_claims(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """claims=True on a store without claims (not the disk or a Redis one) is a
    configuration error that names the stores that have them; a Claims object of one's own
    is taken instead."""
    store = _ThirdPartyStore(cache)
    with pytest.raises(ConfigurationError, match=r"needs a store with claims .*_ThirdPartyStore"):
        CachedReRanker(make_reranker(), store, claims=True)
    own = DiskClaims(cache.directory / "cache.db", lease=60)
    assert CachedReRanker(make_reranker(), store, claims=own).claims is own


def test_claims_on_redis_are_redis_claims(
    make_reranker: Callable[..., QwenReRanker], redis_server: RedisServer
) -> None:
    """claims=True on the Redis store gives it claims in Redis, with the lease asked for."""
    with RedisScoreCache(redis_server.url, namespace="claims") as store:
        claims = CachedReRanker(make_reranker(), store, claims=True, claim_lease=7).claims
        assert isinstance(claims, RedisClaims)
        assert claims.lease == 7


@pytest.mark.asyncio
async def test_claiming_reranker_sends_and_releases(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """With claims on, one process's misses are sent once, and no claim outlives the call."""
    reranker = CachedReRanker(make_reranker(), cache, claims=True)
    copy = reranker.with_query("another query")
    assert copy.claims is reranker.claims
    assert set(reranker.score_texts(TEXTS).scores) == set(TEXTS)
    try:
        assert set((await copy.ascore_texts(TEXTS)).scores) == set(TEXTS)
    finally:
        await close_shared_aio_session()
    assert reranker.score_texts(TEXTS).batches == ()
    assert set(pairs_sent(server).values()) == {1}
    assert len(pairs_sent(server)) == 2 * len(TEXTS)
    assert reranker.claims is not None
    assert reranker.claims.held(pair_keys(reranker, TEXTS) + pair_keys(copy, TEXTS)) == set()


def test_a_live_claim_is_not_taken(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """A key another process claimed is not ours until its lease ends."""
    keys = pair_keys(make_reranker(), TEXTS[:3])
    db = cache.directory / "cache.db"
    with freeze_time("2026-06-01 12:00:00") as clock:
        other, me = DiskClaims(db, lease=60), DiskClaims(db, lease=60)
        assert other.claim(keys) == set(keys)
        assert other.claim(keys) == set(keys)  # claiming again what one holds is fine
        assert me.claim([*keys, "free key"]) == {"free key"}
        me.release(keys)  # not ours: nothing happens
        clock.tick(59)
        assert me.claim(keys) == set()
        assert me.held(keys) == set(keys)
        clock.tick(2)
        assert me.held(keys) == set()
        assert me.claim(keys) == set(keys)


def test_a_dead_claimers_keys_are_taken_over_after_the_lease(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Keys claimed by a process that died are sent by another once the lease has passed."""
    reranker = CachedReRanker(make_reranker(), cache, claims=True, claim_lease=60)
    keys = pair_keys(reranker, TEXTS)
    # The dead process claimed two hours ago with a one-minute lease.
    with freeze_time(datetime.now(timezone.utc) - timedelta(hours=2)):
        assert DiskClaims(cache.directory / "cache.db", lease=60).claim(keys) == set(keys)
    result = reranker.score_texts(TEXTS)
    assert set(result.scores) == set(TEXTS)
    assert Counter(doc for _, doc in pairs_sent(server).elements()) == Counter(TEXTS)


def test_waiting_takes_the_score_that_lands(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """A waiter returns the scores the claimer stores, without claiming them itself."""
    keys = pair_keys(make_reranker(), TEXTS[:2])
    claimer = DiskClaims(cache.directory / "cache.db", lease=60)
    waiter = DiskClaims(cache.directory / "cache.db", lease=60)
    assert claimer.claim(keys) == set(keys)
    polls: list[float] = []

    def claimer_lands(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            cache.put_many({keys[0]: 0.25, keys[1]: 0.75}, model="m")
            claimer.release(keys)

    found = wait_for_claimed(cache, waiter, keys, sleep=claimer_lands)
    assert found == {keys[0]: 0.25, keys[1]: 0.75}
    assert len(polls) == 3
    assert polls[0] < polls[1] < polls[2]  # the pause grows


def test_waiting_gives_keys_back_when_the_claim_expires(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """A waiter stops once the claim has expired without a score: the key is its to claim."""
    keys = pair_keys(make_reranker(), TEXTS[:1])
    db = cache.directory / "cache.db"
    with freeze_time("2026-06-01 12:00:00") as clock:
        assert DiskClaims(db, lease=60).claim(keys) == set(keys)
        waiter = DiskClaims(db, lease=60)

        def pass_half_a_lease(seconds: float) -> None:
            clock.tick(31)

        assert wait_for_claimed(cache, waiter, keys, sleep=pass_half_a_lease) == {}
        assert waiter.claim(keys) == set(keys)


_CHILD = textwrap.dedent(
    """
    import random, sys
    sys.path.insert(0, sys.argv[1])
    from rerank_cache import CachedReRanker, QwenReRanker, ScoreCache
    from rerank_cache.stores.open import open_store

    location, base_url, api_key, me, claims = sys.argv[2:7]
    texts = [f"shared document {i}" for i in range(40)]
    cache = open_store(location, ScoreCache)
    base = CachedReRanker(
        QwenReRanker("q0", rerank_field="content", api_key=api_key, base_url=base_url),
        cache, claims=claims == "on",
    )
    rng = random.Random(int(me))
    print("ready", flush=True)
    sys.stdin.readline()
    for round in range(6):
        query = f"q{round}"
        mine = rng.sample(texts, 25)
        base.with_query(query).score_texts(mine)
    cache.close()
    print("done", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["disk", "redis", "cluster"])
def test_processes_with_claims_send_each_pair_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Three processes racing over the same pairs with claims on, sharing a disk store, a
    Redis or a Redis Cluster: the server sees each once, and the store counts no duplicate
    send."""
    if kind == "disk":
        location = str(tmp_path / "shared")
        ScoreCache(location).close()
    else:
        target = request.getfixturevalue("redis_cluster" if kind == "cluster" else "redis_server")
        location = f"{target.url}?namespace=race-{tmp_path.name}"
    with DashScopeServer(latency=0.05) as server:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    SRC,
                    location,
                    server.base_url,
                    API_KEY,
                    str(i),
                    "on",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-3000:]
                assert out.strip() == "done"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        sent = pairs_sent(server)
    assert sent, "nothing was sent"
    assert {pair: n for pair, n in sent.items() if n > 1} == {}
    with open_store(location, ScoreCache) as cache:
        assert cache.stats().duplicate_sends == 0
        assert cache.stats().entries == len(sent)
