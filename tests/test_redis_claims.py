"""Claims on in-flight pairs in the Redis and Redis Cluster stores: ``claims=True`` works on
them as on the disk store; only the owner releases a claim; a lease ends in Redis itself;
storage trouble fails open without showing the password."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rerank_cache import CachedReRanker, QwenReRanker
from rerank_cache.keys import KeyBuilder
from rerank_cache.stores.claims import claims_for
from rerank_cache.stores.redis import RedisScoreCache
from rerank_cache.stores.redis_claims import RedisClaims
from rerank_cache.stores.redis_cluster import RedisClusterScoreCache
from rerank_cache.testing import DashScopeServer

from .helpers import pair_keys, pairs_sent
from .redis_fixture import RedisClusterServers, RedisServer, free_port

TEXTS = [f"document number {i} about vector databases" for i in range(12)]
BOUND = 10.0  # seconds a poll of Redis or the server may take before the test fails


class Kit:
    """Stores of one fresh namespace on the session's Redis (or cluster), as if each were
    another process's, and a plain client to look at the keys with."""

    def __init__(self, kind: str, target: RedisServer | RedisClusterServers) -> None:
        self.kind = kind
        self.target = target
        self.namespace = f"c-{uuid.uuid4().hex[:12]}"
        self.stores: list[RedisScoreCache] = []

    def store(self) -> RedisScoreCache:
        """A new store object on the namespace (another process's, as far as claims go)."""
        made = (
            RedisClusterScoreCache(self.target.url, namespace=self.namespace)
            if self.kind == "cluster"
            else RedisScoreCache(self.target.url, namespace=self.namespace)
        )
        self.stores.append(made)
        return made

    def client(self) -> Any:
        """A plain redis-py client (or cluster client) on the same Redis."""
        return self.target.client()

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture(params=["redis", "cluster"])
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    """A namespace on the session's redis-server, then on its three-primary cluster."""
    fixture = "redis_cluster" if request.param == "cluster" else "redis_server"
    made = Kit(request.param, request.getfixturevalue(fixture))
    try:
        yield made
    finally:
        made.close()


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds, failing the test after :data:`BOUND` seconds."""
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {BOUND} s: {what}")
        time.sleep(0.002)


def test_claims_for_a_redis_store_are_redis_claims(kit: Kit) -> None:
    """claims_for picks RedisClaims for both Redis stores, with the lease asked for."""
    claims = claims_for(kit.store(), lease=12.5)
    assert isinstance(claims, RedisClaims)
    assert claims.lease == 12.5
    with pytest.raises(ValueError, match="lease"):
        RedisClaims(kit.store(), lease=0)


def test_a_live_claim_is_not_taken(kit: Kit, make_reranker: Callable[..., QwenReRanker]) -> None:
    """A key another process claimed is not ours; releasing it as not ours leaves it; once
    released by its owner it can be claimed again."""
    keys = pair_keys(make_reranker(), TEXTS[:3])
    other, me = RedisClaims(kit.store(), lease=60), RedisClaims(kit.store(), lease=60)
    assert other.owner != me.owner
    assert other.claim(keys) == set(keys)
    assert other.claim(keys) == set(keys)  # its own live claim is still its own (as on disk)
    assert me.claim([*keys, "free key"]) == {"free key"}
    me.release(keys)  # not ours: nothing happens
    assert me.held([*keys, "free key", "never claimed"]) == {*keys, "free key"}
    assert me.claim(keys) == set()
    other.release(keys[:2])
    assert me.held(keys) == {keys[2]}
    assert me.claim(keys) == set(keys[:2])
    me.release([*keys, "free key"])
    assert me.held([*keys, "free key"]) == {keys[2]}


def test_claim_keys_sit_beside_the_scores(
    kit: Kit, make_reranker: Callable[..., QwenReRanker]
) -> None:
    """A claim is one key in the namespace's claims space, holding its owner's name and
    expiring with the lease; on a cluster a call's claims share its scores' slot."""
    keys = pair_keys(make_reranker(), TEXTS[:4])
    claims = RedisClaims(kit.store(), lease=30)
    assert claims.claim(keys) == set(keys)
    names = [claims.claim_key(key) for key in keys]
    assert all(name.startswith(f"{kit.namespace}:c:") for name in names)
    with kit.client() as client:
        assert {client.get(name) for name in names} == {claims.owner.encode()}
        assert all(0 < client.pttl(name) <= 30_000 for name in names)
        if kit.kind == "cluster":
            scores = [f"{kit.namespace}:s:" + name.split(":c:", 1)[1] for name in names]
            assert {client.keyslot(name) for name in names + scores} == {client.keyslot(names[0])}


def test_a_dead_claimers_keys_are_free_once_the_lease_ends(
    kit: Kit, make_reranker: Callable[..., QwenReRanker]
) -> None:
    """Redis expires a claim with its lease: a claimer that never releases (it crashed)
    holds its keys no longer than that."""
    keys = pair_keys(make_reranker(), TEXTS[:3])
    dead = RedisClaims(kit.store(), lease=0.001)
    me = RedisClaims(kit.store(), lease=60)
    assert dead.claim(keys) == set(keys)
    _until(lambda: me.held(keys) == set(), "the 1 ms lease ends in Redis")
    assert me.claim(keys) == set(keys)
    dead.release(keys)  # a late release of an expired claim leaves the new owner's
    assert me.held(keys) == set(keys)


def test_a_claim_held_across_slots_is_released_in_each(kit: Kit) -> None:
    """Keys of several queries (on a cluster, several slots) are claimed, read and released
    in one call each."""
    builders = [KeyBuilder("m", None, f"query {i}") for i in range(6)]
    keys = [key for builder in builders for key in builder.keys(TEXTS[:2])]
    claims = RedisClaims(kit.store(), lease=60)
    assert claims.claim(keys) == set(keys)
    assert claims.held(keys) == set(keys)
    claims.release(keys)
    assert claims.held(keys) == set()


def test_two_processes_send_each_pair_once(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Two rerankers on separate store objects (two processes, as far as single flight
    goes) scoring the same texts at once with claims on: the server sees each pair once,
    and both get every score."""
    rerankers = [CachedReRanker(make_reranker(), kit.store(), claims=True) for _ in range(2)]
    assert all(isinstance(r.claims, RedisClaims) for r in rerankers)
    results: list[dict[str, float]] = []
    start = threading.Barrier(len(rerankers))

    def run(reranker: CachedReRanker) -> None:
        start.wait(timeout=BOUND)
        results.append(reranker.score_texts(TEXTS).scores)

    threads = [threading.Thread(target=run, args=(r,)) for r in rerankers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 2
    assert results[0] == results[1]
    assert set(results[0]) == set(TEXTS)
    assert set(pairs_sent(server).values()) == {1}
    assert len(pairs_sent(server)) == len(TEXTS)
    claims = rerankers[0].claims
    assert claims is not None
    assert claims.held(pair_keys(rerankers[0], TEXTS)) == set()


def test_the_waiter_takes_the_scores_from_the_store(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Pairs another process claimed are not sent: the waiter returns the scores that
    process stores, and sends only the rest."""
    reranker = CachedReRanker(make_reranker(), kit.store(), claims=True)
    keys = pair_keys(reranker, TEXTS)
    other_store = kit.store()
    other = RedisClaims(other_store, lease=60)
    assert other.claim(keys[:4]) == set(keys[:4])
    result: dict[str, float] = {}
    waiter = threading.Thread(target=lambda: result.update(reranker.score_texts(TEXTS).scores))
    waiter.start()
    try:
        # The waiter sends its own pairs after claiming: once they reach the server, the
        # claimed four are the ones it waits for.
        _until(lambda: len(pairs_sent(server)) == len(TEXTS) - 4, "the waiter sends its pairs")
        landed = {key: 0.125 * (i + 1) for i, key in enumerate(keys[:4])}
        assert other_store.put_many(landed, model=reranker.model)
        other.release(keys[:4])
    finally:
        waiter.join(timeout=60)
    assert {text: result[text] for text in TEXTS[:4]} == {
        text: 0.125 * (i + 1) for i, text in enumerate(TEXTS[:4])
    }
    assert set(result) == set(TEXTS)
    assert {doc for _, doc in pairs_sent(server)} == set(TEXTS[4:])
    assert set(pairs_sent(server).values()) == {1}


def test_claims_fail_open_when_redis_is_down(
    make_reranker: Callable[..., QwenReRanker],
    server: DashScopeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis unreachable a claim counts as ours (the pairs are sent), nothing is held,
    a release is skipped; the warning names the Redis without its password."""
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    keys = pair_keys(make_reranker(), TEXTS[:3])
    with RedisScoreCache(url, namespace="down") as store, caplog.at_level(logging.WARNING):
        claims = RedisClaims(store, lease=60)
        assert claims.claim(keys) == set(keys)
        assert "could not claim 3 key(s)" in caplog.text
        assert "127.0.0.1" in caplog.text
        claims.release(keys)
        assert claims.held(keys) == set()
        reranker = CachedReRanker(make_reranker(), store, claims=claims)
        assert set(reranker.score_texts(TEXTS).scores) == set(TEXTS)
    assert Counter(doc for _, doc in pairs_sent(server).elements()) == Counter(TEXTS)
    assert "hunter2-secret" not in caplog.text
    assert "***" in caplog.text


def test_a_planted_claim_key_neither_blocks_nor_breaks(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], caplog: pytest.LogCaptureFixture
) -> None:
    """A key without expiry where a claim would be (planted, another program's) is never
    waited for: its pair counts as ours. A release that Redis refuses (the key is a list)
    fails open with a warning and deletes nothing of anyone's."""
    keys = pair_keys(make_reranker(), TEXTS[:2])
    claims = RedisClaims(kit.store(), lease=60)
    with kit.client() as client:
        client.rpush(claims.claim_key(keys[0]), "not a claim")
        with caplog.at_level(logging.WARNING):
            assert claims.claim(keys) == set(keys)
            assert "1 claim key(s)" in caplog.text
            claims.release(keys)
            assert "could not release 2 claim(s)" in caplog.text
        assert client.type(claims.claim_key(keys[0])) == b"list"
        assert client.get(claims.claim_key(keys[1])) == claims.owner.encode()


def test_the_owner_names_the_process(redis_server: RedisServer) -> None:
    """The owner's name starts with the process id (a forked child gets its own), and the
    repr shows where the claims are without a password."""
    with RedisScoreCache(redis_server.url, namespace="owner") as store:
        claims = RedisClaims(store, lease=60)
        assert claims.owner == claims.owner
        assert claims.owner.split("-")[0] == str(os.getpid())
        assert repr(claims) == f"RedisClaims('{redis_server.url}?namespace=owner', lease=60)"
