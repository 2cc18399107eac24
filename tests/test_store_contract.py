"""One contract, two stores: every ScoreStore behaviour, on disk and on a real Redis.

The ``kit`` fixture is parametrized over ``disk`` (:class:`ScoreCache` in a tmp dir) and
``redis`` (:class:`RedisScoreCache` on a private redis-server, one namespace per test); a
contract test the Redis store cannot honour is marked ``disk_only`` with the reason. The tests
below the contract cover what only Redis has (namespaces, a Redis that dies, strict parsing,
the ``--cache-url`` details); what only the disk store has (SafeDisk, directory checks, file
damage, processes sharing one file) is in ``test_disk_store.py``, and the caching layer
itself in ``test_cached.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sqlite3
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from rerank_cache import (
    CachedReRanker,
    CacheError,
    ConfigurationError,
    DashScopeError,
    QwenReRanker,
    RedisScoreCache,
    ScoreCache,
    ScoreStore,
    score_key,
)
from rerank_cache.cli import main
from rerank_cache.stores.redis_cluster import RedisClusterScoreCache, cluster_tag
from rerank_cache.testing import DashScopeServer, score

from .helpers import (
    API_KEY,
    QUERY,
    SRC,
    cached,
    log_lines,
    make_docs,
    plant_row,
    run_python,
    write_lock_held,
    write_log,
)
from .redis_fixture import RedisClusterServers, RedisServer, free_port

MODEL = "gte-rerank-v2"
Advance = Callable[[float], None]


def key(i: int, model: str = MODEL, query: str = "q") -> str:
    return score_key(model, None, query, f"document {i}")


@pytest.fixture(autouse=True)
def _no_cache_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's RERANK_CACHE_URL."""
    monkeypatch.delenv("RERANK_CACHE_URL", raising=False)


# -- the two stores ------------------------------------------------------------------------


class DiskKit:
    """Makes ScoreCaches in one directory, and does to them what the tests need."""

    kind = "disk"
    keeps_expired = True
    """Expired rows stay in the file until a write or expire() deletes them."""

    def __init__(self, tmp_path: Path) -> None:
        self.directory = tmp_path / "scores"
        self.tmp_path = tmp_path

    @property
    def url(self) -> str:
        """What ScoreCache.from_url opens this store by."""
        return str(self.directory)

    def make(self, **kwargs: Any) -> ScoreStore:
        return ScoreCache(self.directory, **kwargs)

    def cli_args(self) -> list[str]:
        return ["--cache-dir", str(self.directory)]

    def plant(self, store_key: str, value: str | bytes | int) -> None:
        plant_row(self.directory, store_key, value=value)

    def remaining_ttl(self, store_key: str) -> float | None:
        con = sqlite3.connect(self.directory / "cache.db")
        (expire_time,) = con.execute(
            "SELECT expire_time FROM Cache WHERE key = ?", (store_key,)
        ).fetchone()
        con.close()
        return None if expire_time is None else expire_time - time.time()

    @contextlib.contextmanager
    def clock(self) -> Iterator[Advance]:
        with freeze_time(datetime.now(timezone.utc)) as frozen:
            yield lambda seconds: frozen.tick(timedelta(seconds=seconds))

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[ScoreStore]:
        """A store whose writes fail: another process holds the write lock."""
        self.make().close()
        with ScoreCache(self.directory, timeout=0.05) as store:
            with write_lock_held(self.directory):
                yield store
            store.flush_stats()

    def reopen_unreachable(self) -> ScoreStore:
        return self.make()


class RedisKit:
    """Makes RedisScoreCaches in a fresh namespace of the session's redis-server."""

    kind = "redis"
    keeps_expired = False
    """Redis deletes expired keys itself: nothing expired is left to count or delete."""

    def __init__(self, server: RedisServer, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.namespace = f"t-{uuid.uuid4().hex[:12]}"
        self.extra: list[RedisServer] = []
        self.dead_port = 0

    @property
    def url(self) -> str:
        """What ScoreCache.from_url opens this store by."""
        return f"{self.server.url}?namespace={self.namespace}"

    def make(self, **kwargs: Any) -> ScoreStore:
        kwargs.setdefault("namespace", self.namespace)
        return RedisScoreCache(self.server.url, **kwargs)

    def cli_args(self) -> list[str]:
        return ["--cache-url", self.url]

    def name(self, store_key: str) -> str:
        """The Redis key a score is stored under."""
        return f"{self.namespace}:s:{store_key}"

    def client(self) -> Any:
        """A client of the server the stores use (closed on leaving ``with``)."""
        return self.server.client()

    def plant(self, store_key: str, value: str | bytes | int) -> None:
        with self.client() as client:
            client.set(self.name(store_key), value)

    def delete(self, *store_keys: str) -> None:
        """Delete scores directly in Redis (one key at a time: slots may differ)."""
        with self.client() as client:
            for store_key in store_keys:
                client.delete(self.name(store_key))

    def remaining_ttl(self, store_key: str) -> float | None:
        with self.client() as client:
            pttl = int(client.pttl(self.name(store_key)))
        assert pttl != -2, "no such key"
        return None if pttl == -1 else pttl / 1000

    @contextlib.contextmanager
    def clock(self) -> Iterator[Advance]:
        """Frozen time for the store, and the same time passing for Redis's TTLs."""
        with freeze_time(datetime.now(timezone.utc)) as frozen, self.client() as c:

            def advance(seconds: float) -> None:
                frozen.tick(timedelta(seconds=seconds))
                for name in c.scan_iter(match=f"{self.namespace}:s:*"):
                    left = int(c.pttl(name))
                    if left > 0:
                        c.pexpire(name, left - int(seconds * 1000))  # <= 0 deletes

            yield advance

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[ScoreStore]:
        """A store pointing at a closed port; afterwards a Redis starts there."""
        self.dead_port = free_port()
        store = RedisScoreCache(
            f"redis://127.0.0.1:{self.dead_port}/0",
            namespace=self.namespace,
            timeout=0.5,
            retry_interval=0,
        )
        try:
            yield store
            self.extra.append(RedisServer(self.tmp_path / "late", port=self.dead_port).start())
        finally:
            store.close()

    def reopen_unreachable(self) -> ScoreStore:
        return RedisScoreCache(f"redis://127.0.0.1:{self.dead_port}/0", namespace=self.namespace)

    def cleanup(self) -> None:
        for srv in self.extra:
            srv.stop()


class ClusterKit(RedisKit):
    """Makes RedisClusterScoreCaches in a fresh namespace of the session's three-primary cluster."""

    kind = "cluster"

    def __init__(self, cluster: RedisClusterServers, tmp_path: Path) -> None:
        super().__init__(cluster.servers[0], tmp_path)
        self.cluster = cluster
        self.late: list[RedisClusterServers] = []

    @property
    def url(self) -> str:
        return f"{self.cluster.url}?namespace={self.namespace}"

    def make(self, **kwargs: Any) -> ScoreStore:
        kwargs.setdefault("namespace", self.namespace)
        return RedisClusterScoreCache(self.cluster.url, **kwargs)

    def name(self, store_key: str) -> str:
        return f"{self.namespace}:s:{{{cluster_tag(store_key)}}}{store_key}"

    def client(self) -> Any:
        return self.cluster.client()

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[ScoreStore]:
        """A store pointing at a closed port; afterwards a one-node cluster starts there."""
        self.dead_port = free_port()
        store = RedisClusterScoreCache(
            f"redis+cluster://127.0.0.1:{self.dead_port}",
            namespace=self.namespace,
            timeout=0.5,
            retry_interval=0,
        )
        try:
            yield store
            late = RedisClusterServers(self.tmp_path / "late", ports=[self.dead_port])
            self.late.append(late.start())
        finally:
            store.close()

    def reopen_unreachable(self) -> ScoreStore:
        return RedisClusterScoreCache(
            f"redis+cluster://127.0.0.1:{self.dead_port}", namespace=self.namespace
        )

    def cleanup(self) -> None:
        for cluster in self.late:
            cluster.stop()


Kit = DiskKit | RedisKit | ClusterKit


@pytest.fixture(params=["disk", "redis", "cluster"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    """Both stores: a disk directory, or a namespace on the session's redis-server.

    A test marked ``@pytest.mark.disk_only("reason")`` pins behaviour the Redis store cannot
    honour; its Redis case is skipped with that reason.
    """
    disk_only = request.node.get_closest_marker("disk_only")
    if request.param != "disk" and disk_only is not None:
        pytest.skip(f"disk store only: {disk_only.args[0]}")
    if request.param == "disk":
        yield DiskKit(tmp_path)
        return
    made = (
        ClusterKit(request.getfixturevalue("redis_cluster"), tmp_path)
        if request.param == "cluster"
        else RedisKit(request.getfixturevalue("redis_server"), tmp_path)
    )
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def store(kit: Kit) -> Iterator[ScoreStore]:
    """A fresh, empty store of the kit's kind."""
    made = kit.make()
    try:
        yield made
    finally:
        made.close()


# -- the contract --------------------------------------------------------------------------


def test_roundtrip_is_bit_exact(store: ScoreStore) -> None:
    """A stored score reads back as the very same float, bit for bit."""
    values = [0.1, 1 / 3, 0.0, 1.0, 5e-324, 0.9999999999999999, 1e-300, 0.7314, 2.5e-7]
    scores = {key(i): v for i, v in enumerate(values)}
    assert store.put_many(scores, model=MODEL)
    found = store.get_many(scores)
    assert found == scores
    for k, v in scores.items():
        assert found[k].hex() == v.hex()


def test_non_finite_and_non_float_values_are_refused(store: ScoreStore) -> None:
    """NaN, infinities, bools and strings are never stored; finite floats and ints are."""
    bad: dict[str, Any] = {
        key(0): math.nan,
        key(1): math.inf,
        key(2): -math.inf,
        key(3): True,
        key(4): "0.5",
    }
    assert store.put_many({**bad, key(5): 0.25, key(6): 1}, model=MODEL)
    assert store.get_many([*bad, key(5), key(6)]) == {key(5): 0.25, key(6): 1.0}
    assert store.count() == 2


def test_missing_keys_are_absent(store: ScoreStore) -> None:
    """Unknown keys are simply absent; an empty lookup is empty."""
    store.put_many({key(1): 0.5}, model=MODEL)
    assert store.get_many([key(0), key(1), key(2)]) == {key(1): 0.5}
    assert store.get_many([]) == {}
    assert store.get_many(iter([key(1)])) == {key(1): 0.5}


def test_ttl_is_set_on_every_score(kit: Kit) -> None:
    """Each score carries the store's TTL (Redis: PTTL on the key)."""
    with kit.make(ttl=timedelta(hours=2)) as s:
        s.put_many({key(1): 0.5, key(2): 0.6}, model=MODEL)
    for k in (key(1), key(2)):
        left = kit.remaining_ttl(k)
        assert left is not None
        assert 7200 - 30 < left <= 7200


def test_ttl_none_never_expires(kit: Kit) -> None:
    """ttl=None stores scores without expiry: still there ten years later."""
    with kit.clock() as advance, kit.make(ttl=None) as s:
        s.put_many({key(1): 0.5}, model=MODEL)
        assert kit.remaining_ttl(key(1)) is None
        advance(10 * 365 * 86400)
        assert s.get_many([key(1)]) == {key(1): 0.5}
        assert s.stats().entries == 1


def test_expired_scores_are_misses_and_not_entries(kit: Kit) -> None:
    """After the TTL a score is a miss and no longer counted as an entry."""
    with kit.clock() as advance, kit.make(ttl=3600) as s:
        s.put_many({key(1): 0.5, key(2): 0.25}, model=MODEL)
        advance(3000)
        s.put_many({key(3): 0.75}, model=MODEL)
        advance(599)
        assert s.get_many([key(1), key(2), key(3)]) == {key(1): 0.5, key(2): 0.25, key(3): 0.75}
        advance(2)
        assert s.get_many([key(1), key(2), key(3)]) == {key(3): 0.75}
        advance(60)  # Redis counts entries by expiry bucket (ttl/512 wide, ~7 s here)
        assert (s.stats().entries, s.count()) == (1, 1)
        s.expire()  # disk deletes the expired rows; Redis has deleted them itself
        assert (s.count(expired=True), s.count()) == (0, 1)
        assert s.get_many([key(3)]) == {key(3): 0.75}


def test_duplicate_sends_are_counted(store: ScoreStore) -> None:
    """Writing scores whose keys are already live counts them as duplicate sends."""
    store.put_many({key(i): 0.1 * i for i in range(5)}, model=MODEL, api_requests=1)
    store.put_many({key(i): 0.1 * i for i in range(3, 8)}, model=MODEL, api_requests=1)
    stats = store.stats()
    assert stats.duplicate_sends == 2
    assert stats.models[MODEL].duplicate_sends == 2
    assert stats.entries == 8


def test_counters_and_stats_per_model(kit: Kit) -> None:
    """Hits, misses, usage and fallbacks add up per model and persist across instances."""
    with kit.make(stats_flush_interval=3600) as s:
        s.record_lookup(MODEL, hits=0, misses=4)
        s.put_many(
            {key(i): 0.5 for i in range(4)},
            model=MODEL,
            api_requests=1,
            documents_sent=4,
            tokens_billed=120,
        )
        s.record_lookup(MODEL, hits=4, misses=0)
        s.record_lookup("qwen3-rerank", hits=0, misses=2)
        s.put_many(
            {key(i, "qwen3-rerank"): 0.25 for i in range(2)},
            model="qwen3-rerank",
            api_requests=1,
            documents_sent=2,
            tokens_billed=50,
        )
        s.record_fallback("qwen3-rerank")
        live = s.stats()  # includes what is still only in memory
    with kit.make() as again:
        stored = again.stats()
    for stats in (live, stored):
        assert (stats.hits, stats.misses, stats.hit_rate) == (4, 6, 0.4)
        assert (stats.api_requests, stats.documents_sent, stats.tokens_billed) == (2, 6, 170)
        assert (stats.entries, stats.fallbacks, stats.store_errors) == (6, 1, 0)
        gte, qwen = stats.models[MODEL], stats.models["qwen3-rerank"]
        assert (gte.entries, gte.hits, gte.misses, gte.tokens_billed) == (4, 4, 4, 120)
        assert (qwen.entries, qwen.misses, qwen.api_requests, qwen.fallbacks) == (2, 2, 1, 1)
        assert stats.newest_entry is not None
        assert stats.oldest_entry is not None
        assert stats.oldest_entry <= stats.newest_entry


def test_clear_one_model_then_everything(store: ScoreStore) -> None:
    """clear(model) deletes only that model's scores; clear() the rest; counters stay."""
    store.put_many({key(i, "qwen3-rerank"): 0.5 for i in range(4)}, model="qwen3-rerank")
    store.put_many({key(i): 0.5 for i in range(6)}, model=MODEL, api_requests=1)
    assert store.count(model="qwen3-rerank") == 4
    assert store.clear(model="qwen3-rerank") == 4
    assert store.get_many([key(0, "qwen3-rerank")]) == {}
    assert store.get_many([key(0)]) == {key(0): 0.5}
    stats = store.stats()
    assert stats.entries == 6
    assert {m for m, per_model in stats.models.items() if per_model.entries} == {MODEL}
    assert store.count(model="qwen3-rerank") == 0
    assert store.count(expired=True) == 0
    assert store.clear() == 6
    assert store.clear() == 0
    stats = store.stats()
    assert (stats.entries, stats.api_requests) == (0, 1)


def test_check_finds_and_fixes_planted_garbage(kit: Kit, store: ScoreStore) -> None:
    """Values that are not floats of ours (text, a blob, an integer) read as misses; check
    reports them, fix removes them."""
    store.put_many({key(0): 0.5}, model=MODEL)
    for i, value in enumerate(["0.90", "not a score", "nan", b"\x80\x04", 7], start=1):
        kit.plant(key(i), value)
    assert store.get_many([key(i) for i in range(6)]) == {key(0): 0.5}
    report = store.check()
    assert (report.ok, report.unsafe_rows, report.rows) == (False, 5, 6)
    fixed = store.check(fix=True)
    assert (fixed.ok, fixed.fixed) == (True, 5)
    again = store.check()
    assert (again.ok, again.unsafe_rows, again.rows) == (True, 0, 1)
    assert store.get_many([key(0)]) == {key(0): 0.5}


def test_cached_reranker_sends_only_misses(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """End to end: a repeat sends nothing (the same floats, bit for bit), an overlap sends
    only the new texts; the counts persist for the next instance."""
    with kit.make() as store:
        r = CachedReRanker(make_reranker(), store)
        docs = make_docs(30, seed=4)
        first = r.rerank([docs[:20]], 20)
        again = r.rerank([docs[:20]], 20)
        assert server.stats.documents == 20
        assert [(d.id, d.score) for d in first] == [(d.id, d.score) for d in again]
        assert all(d.score == score(r.query, d.field("content")) for d in again)
        server.reset_stats()
        r.rerank([docs[10:30]])
        (request,) = server.requests_log
        assert sorted(request.documents) == sorted(d.field("content") for d in docs[20:30])
        live = store.stats()
    with kit.make() as later:
        stored = later.stats()
    for stats in (live, stored):
        assert (stats.entries, stats.hits, stats.misses) == (30, 30, 30)
        assert (stats.api_requests, stats.documents_sent) == (2, 30)


def test_unreachable_store_fails_open(
    kit: Kit,
    make_reranker: Callable[..., QwenReRanker],
    server: DashScopeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that cannot be used: reranks succeed through the API; errors and usage are kept."""
    with kit.unreachable() as s, caplog.at_level(logging.WARNING):
        r = CachedReRanker(make_reranker(), s)
        out = r.rerank([make_docs(4)], 4)
        assert len(out) == 4
        assert s.put_many({key(1): 0.5}, model=MODEL) is False
        assert "continuing without the cache" in caplog.text
    with kit.reopen_unreachable() as later:
        stats = later.stats()
    assert stats.store_errors >= 1
    assert "" not in stats.models  # errors count in the totals, not under a nameless model
    assert stats.entries == 0
    assert (stats.api_requests, stats.documents_sent) == (1, 4)  # usage survived


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), "1h"])
def test_bad_ttl_rejected(kit: Kit, ttl: object) -> None:
    """A TTL that is not a positive duration is a clear ValueError."""
    with pytest.raises(ValueError, match="ttl"):
        kit.make(ttl=ttl)


def test_expired_scores_are_fetched_again(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Through a cached reranker: a hit just before the TTL, a miss fetched again after it."""
    docs = make_docs(5)
    with kit.clock() as advance, kit.make(ttl=timedelta(hours=1)) as s:
        r = CachedReRanker(make_reranker(), s)
        r.rerank([docs])
        advance(59 * 60)
        r.rerank([docs])
        assert server.stats.requests == 1
        advance(2 * 60)
        assert s.stats().expired_entries == (5 if kit.keeps_expired else 0)
        r.rerank([docs])
        assert server.stats.requests == 2
        assert s.stats().entries == 5


@pytest.mark.disk_only("Redis deletes expired keys itself, so expire(now=...) has none to delete")
def test_expire_deletes_what_has_expired_by_then(store: ScoreStore) -> None:
    """expire() deletes only expired scores; expire(now=...) those expired by that time."""
    store.put_many({key(i): 0.5 for i in range(6)}, model=MODEL)
    assert store.expire() == 0
    assert store.count() == 6
    assert store.expire(now=1e12) == 6
    assert store.clear() == 0


def test_stats_match_server(
    store: ScoreStore, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Hits, misses, requests, documents and tokens match what the server counted."""
    r = cached(make_reranker, store)
    docs = make_docs(700, chars=300, seed=11)
    r.rerank([docs[:600]])
    r.rerank([docs[300:700]])
    r.with_query("other query").rerank([docs[:10]])
    stats = store.stats()
    srv = server.stats
    assert stats.api_requests == srv.ok_requests
    assert stats.documents_sent == srv.documents
    assert stats.tokens_billed == srv.tokens
    assert stats.misses == srv.documents == 600 + 100 + 10
    assert stats.hits == 300
    assert stats.hit_rate == pytest.approx(300 / 1010)
    assert stats.entries == 710
    model = stats.models["gte-rerank-v2"]
    assert (model.entries, model.hits, model.tokens_billed) == (710, 300, srv.tokens)


def test_stats_count_models_whose_names_nest(store: ScoreStore) -> None:
    """Per-model entries stay exact when one model name is a prefix of another."""
    for model, n in (("a", 3), ("a:b", 5), ("ab", 2), ("b", 4)):
        store.put_many({score_key(model, None, "q", f"d{i}"): 0.5 for i in range(n)}, model=model)
    stats = store.stats()
    assert {m: s.entries for m, s in stats.models.items()} == {"a": 3, "a:b": 5, "ab": 2, "b": 4}
    assert stats.entries == 14


def test_scores_survive_into_a_new_process(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Scores written by one process are hits in another that opens the store by URL."""
    with kit.make() as s:
        CachedReRanker(make_reranker(), s).rerank([make_docs(20)])
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {SRC!r})
        from rerank_cache import CachedReRanker, QwenReRanker, ScoreCache
        from tests.helpers import make_docs
        with ScoreCache.from_url({kit.url!r}) as store:
            r = CachedReRanker(QwenReRanker("vector database cache", rerank_field="content",
                api_key={API_KEY!r}, base_url={server.base_url!r}), store)
            out = r.rerank([make_docs(20)], 20)
            print(json.dumps([[d.id, d.score] for d in out]))
    """)
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert server.stats.requests == 1
    ids_scores = json.loads(proc.stdout)
    assert len(ids_scores) == 20
    assert ids_scores[0][1] == max(s for _, s in ids_scores)


def test_cli_warm_stats_clear(
    kit: Kit,
    server: DashScopeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """warm, stats and clear work the same with --cache-dir and --cache-url."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.base_url)
    log = write_log(tmp_path / "log.jsonl", log_lines(4) + log_lines(2, model="qwen3-rerank"))
    where = kit.cli_args()
    assert main([*where, "warm", str(log)]) == 0
    assert main([*where, "warm", str(log)]) == 0
    capsys.readouterr()
    assert main([*where, "stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["entries"], data["hits"], data["misses"]) == (48, 0, 0)  # warming apart
    assert data["warm"] == {
        "lines": 12,
        "looked_up": 96,
        "already_cached": 48,
        "sent": 48,
        "tokens_billed": server.stats.tokens,
    }
    assert data["api_requests"] == server.stats.ok_requests
    assert data["tokens_billed"] == server.stats.tokens
    assert data["models"]["qwen3-rerank"]["entries"] == 16
    assert data["models"]["qwen3-rerank"]["warm"]["sent"] == 16
    assert main([*where, "stats"]) == 0
    assert "hit rate                  \u2014" in capsys.readouterr().out
    assert main([*where, "clear", "--model", "qwen3-rerank", "--yes"]) == 0
    assert "deleted 16 scores of model qwen3-rerank" in capsys.readouterr().out
    assert main([*where, "check"]) == 0
    assert "ok: 32 rows checked" in capsys.readouterr().out
    assert main([*where, "clear", "--yes"]) == 0
    assert "deleted 32 scores" in capsys.readouterr().out
    with kit.make() as s:
        assert s.stats().entries == 0


# -- from_url ------------------------------------------------------------------------------


def test_from_url_file_and_plain_path(tmp_path: Path) -> None:
    """file:// URLs and plain paths open a ScoreCache in that directory."""
    with ScoreCache.from_url(f"file://{tmp_path}/a") as a:
        assert isinstance(a, ScoreCache)
        assert a.directory == tmp_path / "a"
    with ScoreCache.from_url(str(tmp_path / "b"), ttl=60) as b:
        assert isinstance(b, ScoreCache)
        assert (b.directory, b.ttl) == (tmp_path / "b", 60)


def test_from_url_redis(redis_server: RedisServer) -> None:
    """redis:// URLs open a RedisScoreCache; ?namespace= picks the namespace."""
    store = ScoreCache.from_url(f"{redis_server.url}?namespace=app-1", ttl=60)
    try:
        assert isinstance(store, RedisScoreCache)
        assert (store.namespace, store.ttl) == ("app-1", 60)
        assert store.location == f"{redis_server.url}?namespace=app-1"
    finally:
        store.close()


@pytest.mark.parametrize(
    "url", ["http://example.com/x", "s3://bucket/x", "file://otherhost/x", "file:///x?y=1"]
)
def test_from_url_refuses_other_schemes(url: str) -> None:
    """Other schemes, and file URLs naming a remote host, are configuration errors."""
    with pytest.raises(ConfigurationError):
        ScoreCache.from_url(url)


def test_from_url_without_redis_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, a Redis URL raises ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "rerank_cache.stores.redis")
    with pytest.raises(ImportError, match=r"pip install 'rerank-cache\[redis\]'"):
        ScoreCache.from_url("redis://127.0.0.1:1/0")


# -- Redis only ----------------------------------------------------------------------------


@pytest.fixture
def ns() -> str:
    """A fresh namespace."""
    return f"t-{uuid.uuid4().hex[:12]}"


def test_namespaces_isolate_applications(redis_server: RedisServer) -> None:
    """Two namespaces on one Redis share nothing: scores, counters, clear, check."""
    with (
        RedisScoreCache(redis_server.url, namespace="app-a") as a,
        RedisScoreCache(redis_server.url, namespace="app-b") as b,
    ):
        a.clear()
        b.clear()
        a.put_many({key(1): 0.5, key(2): 0.25}, model=MODEL, api_requests=1)
        b.put_many({key(1): 0.75}, model=MODEL, api_requests=1)
        assert a.get_many([key(1), key(2)]) == {key(1): 0.5, key(2): 0.25}
        assert b.get_many([key(1), key(2)]) == {key(1): 0.75}
        assert (a.count(), b.count()) == (2, 1)
        before_b = b.stats()
        assert a.clear() == 2
        assert b.get_many([key(1)]) == {key(1): 0.75}
        assert b.check().rows == 1
        assert b.stats().api_requests == before_b.api_requests


def test_values_are_parsed_strictly(redis_server: RedisServer, ns: str) -> None:
    """Only the exact repr of a finite float is a score: anything else is a miss."""
    planted = ["0.50", " 0.5", "0.5\n", "5e-1", "nan", "inf", "0x1p-1", "1_0", "", "\x80\xff"]
    with redis_server.client() as client, RedisScoreCache(redis_server.url, namespace=ns) as s:
        for i, value in enumerate(planted):
            client.set(f"{ns}:s:{key(i)}", value.encode("latin-1"))
        client.set(f"{ns}:s:{key(99)}", "0.5")
        assert s.get_many([key(i) for i in [*range(len(planted)), 99]]) == {key(99): 0.5}
        assert s.check().unsafe_rows == len(planted)


def test_other_redis_types_and_foreign_keys_are_unsafe(
    redis_server: RedisServer,
    ns: str,
) -> None:
    """A hash under a score key, or a key name not of ours, is reported and removed."""
    with redis_server.client() as client, RedisScoreCache(redis_server.url, namespace=ns) as s:
        client.hset(f"{ns}:s:{key(1)}", "x", "1")
        client.set(f"{ns}:s:not-a-score-key", "0.5")
        assert s.get_many([key(1)]) == {}
        assert s.put_many({key(1): 0.5, key(2): 0.25}, model=MODEL) is False
        assert s.get_many([key(2)]) == {key(2): 0.25}
        report = s.check()
        assert (report.unsafe_rows, report.ok) == (2, False)
        assert s.check(fix=True).fixed == 2
        assert s.put_many({key(1): 0.5}, model=MODEL) is True
        assert s.check().ok


def test_scores_are_plain_strings_with_redis_ttl(
    redis_server: RedisServer,
    ns: str,
) -> None:
    """What is stored: the repr of the float under '{ns}:s:{key}', with PX set by Redis."""
    with (
        redis_server.client() as client,
        RedisScoreCache(redis_server.url, namespace=ns, ttl=60) as s,
    ):
        s.put_many({key(1): 1 / 3}, model=MODEL, api_requests=1)
        assert client.get(f"{ns}:s:{key(1)}") == repr(1 / 3).encode()
        assert 59_000 < int(client.pttl(f"{ns}:s:{key(1)}")) <= 60_000
        assert client.type(f"{ns}:counters") == b"hash"


def test_check_recounts_after_keys_vanish(
    redis_server: RedisServer,
    ns: str,
) -> None:
    """Keys deleted behind our back (eviction) are reported, and check --fix recounts."""
    with redis_server.client() as client, RedisScoreCache(redis_server.url, namespace=ns) as s:
        s.put_many({key(i): 0.5 for i in range(10)}, model=MODEL)
        client.delete(*[f"{ns}:s:{key(i)}" for i in range(4)])
        assert s.stats().entries == 10  # counters cannot see evictions
        report = s.check()
        assert report.ok
        assert any("entry counters say 10" in m for m in report.messages)
        s.check(fix=True)
        stats = s.stats()
        assert (stats.entries, stats.models[MODEL].entries) == (6, 6)
        assert stats.oldest_entry is not None


def test_stats_never_write(redis_server: RedisServer, ns: str) -> None:
    """stats() and `rerank-cache stats` change nothing in Redis."""
    with RedisScoreCache(redis_server.url, namespace=ns) as s:
        s.put_many({key(1): 0.5}, model=MODEL, api_requests=1)
    with redis_server.client() as client:

        def changes() -> int:
            return int(client.info("persistence")["rdb_changes_since_last_save"])

        before = changes()
        with RedisScoreCache(redis_server.url, namespace=ns) as s:
            assert s.stats().entries == 1
            assert s.count() == 1
        url = f"{redis_server.url}?namespace={ns}"
        assert main(["--cache-url", url, "stats", "--json"]) == 0
        assert main(["--cache-url", url, "stats"]) == 0
        assert changes() == before


def test_kill_redis_mid_run(
    tmp_path: Path,
    make_reranker: Callable[..., QwenReRanker],
    server: DashScopeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis dies between two reranks: the second goes through the API; errors are counted
    in memory and reach Redis once it is back."""
    private = RedisServer(tmp_path / "private").start()
    try:
        store = RedisScoreCache(private.url, timeout=0.5, retry_interval=0)
        r = CachedReRanker(make_reranker(), store)
        docs = make_docs(6, seed=2)
        first = r.rerank([docs], 6)
        r.rerank([docs], 6)
        assert server.stats.requests == 1
        private.kill()
        with caplog.at_level(logging.WARNING):
            again = r.rerank([docs], 6)
            other = r.rerank([make_docs(3, seed=9)], 3)
        assert [(d.id, d.score) for d in again] == [(d.id, d.score) for d in first]
        assert len(other) == 3
        assert server.stats.requests == 3
        assert "continuing without the cache" in caplog.text
        with pytest.raises(CacheError, match="cannot use Redis"):
            store.stats()
        private = RedisServer(tmp_path / "private", port=private.port).start()  # empty again
        store.close()  # flushes what was counted while Redis was down
        with RedisScoreCache(private.url) as back:
            stats = back.stats()
        assert stats.store_errors >= 2
        assert (stats.api_requests, stats.documents_sent) == (2, 9)
        assert stats.entries == 0
    finally:
        private.stop()


def test_down_redis_is_left_alone_for_retry_interval(tmp_path: Path) -> None:
    """After a failure, Redis is not tried again for retry_interval: reads miss at once."""
    port = free_port()
    with RedisScoreCache(f"redis://127.0.0.1:{port}/0", retry_interval=3600) as s:
        assert s.get_many([key(1)]) == {}
        late = RedisServer(tmp_path / "late", port=port).start()
        try:
            with late.client() as client:
                client.set(f"rerank-cache:s:{key(1)}", "0.5")
            assert s.get_many([key(1)]) == {}  # still considered down
            assert s.put_many({key(2): 0.5}, model=MODEL) is False
            s.ping()  # an explicit check goes through and marks Redis up again
            assert s.get_many([key(1)]) == {key(1): 0.5}
        finally:
            late.stop()


def test_slow_redis_times_out_and_fails_open(tmp_path: Path) -> None:
    """A Redis that does not answer within the timeout is a miss, not a hang."""
    with (
        RedisServer(tmp_path / "slow") as slow,
        slow.client() as admin,
        RedisScoreCache(slow.url, timeout=0.1, retry_interval=0) as s,
    ):
        s.put_many({key(1): 0.5}, model=MODEL)
        admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
        started = time.monotonic()
        assert s.get_many([key(1)]) == {}
        assert time.monotonic() - started < 0.6
        admin.execute_command("CLIENT", "UNPAUSE")
        assert s.get_many([key(1)]) == {key(1): 0.5}


def test_repr_and_messages_hide_the_password() -> None:
    """The password never shows: not in repr, location, stats, errors or the CLI."""
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    with RedisScoreCache(url, retry_interval=0) as s:
        assert "hunter2" not in repr(s) + s.location
        assert s.location.startswith("redis://:***@127.0.0.1:")
        with pytest.raises(CacheError) as info:
            s.stats()
        assert "hunter2" not in str(info.value)
    proc = run_python(
        "-m",
        "rerank_cache",
        "--cache-url",
        url,
        "stats",
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RERANK_CACHE_URL"},
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("rerank-cache: error: cannot use Redis at redis://:***@")
    assert "hunter2" not in proc.stderr + proc.stdout
    assert main(["--cache-url", url, "path"]) == 0


@pytest.mark.parametrize("command", [["stats"], ["warm", "-"], ["clear", "--yes"], ["check"]])
def test_cli_unreachable_redis_is_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command against a Redis nobody listens on: one line, exit 1."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["--cache-url", url, *command]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot use Redis at redis://127.0.0.1:" in err


def test_cli_url_from_env_and_flags(
    redis_server: RedisServer,
    ns: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """RERANK_CACHE_URL picks Redis; --cache-dir overrides it; both flags are a usage error."""
    url = f"{redis_server.url}?namespace={ns}"
    monkeypatch.setenv("RERANK_CACHE_URL", url)
    assert main(["path"]) == 0
    assert capsys.readouterr().out.strip() == url
    assert main(["--cache-dir", str(tmp_path / "d"), "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "d")
    assert main(["--cache-url", f"file://{tmp_path}/f", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "f")
    assert main(["--cache-dir", "x", "--cache-url", url, "path"]) == 2
    assert main(["--cache-url", "ftp://x/y", "path"]) == 2
    monkeypatch.setenv("RERANK_CACHE_URL", "ftp://x/y")
    assert main(["path"]) == 1
    assert "unsupported cache URL scheme 'ftp://'" in capsys.readouterr().err


def test_cli_check_fix_on_redis(
    redis_server: RedisServer,
    ns: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check finds a planted value (exit 1); check --fix removes it (exit 0)."""
    url = f"{redis_server.url}?namespace={ns}"
    with redis_server.client() as client:
        client.set(f"{ns}:s:{key(1)}", "0.5")
        client.set(f"{ns}:s:{key(2)}", b"\x80\x04pickle")
    assert main(["--cache-url", url, "check"]) == 1
    assert "1 unsafe key(s)" in capsys.readouterr().out
    assert main(["--cache-url", url, "check", "--fix"]) == 0
    assert "removed 1 unsafe row(s)" in capsys.readouterr().out
    assert main(["--cache-url", url, "check"]) == 0


@pytest.mark.parametrize("bad", ["", "a b", "x:y", "*", "-lead", "n" * 65])
def test_bad_namespaces_are_refused(bad: str) -> None:
    """Namespaces are short names of letters, digits, '_', '.', '-'."""
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisScoreCache("redis://127.0.0.1:1/0", namespace=bad)


def test_two_namespaces_for_one_store_are_refused() -> None:
    """A namespace in the URL and a different one as an argument is an error."""
    with pytest.raises(ConfigurationError, match="two namespaces"):
        RedisScoreCache("redis://127.0.0.1:1/0?namespace=a", namespace="b")


def test_check_repairs_counter_hashes(redis_server: RedisServer, ns: str) -> None:
    """A counters key of another type, or malformed fields, are reported and repaired."""
    with redis_server.client() as client, RedisScoreCache(redis_server.url, namespace=ns) as s:
        s.put_many({key(1): 0.5}, model=MODEL, api_requests=1)
        client.delete(f"{ns}:counters")
        client.set(f"{ns}:counters", "planted")
        client.hset(f"{ns}:entries", "garbage", "1")
        with pytest.raises(CacheError, match="WRONGTYPE"):
            s.stats()
        report = s.check()
        assert not report.ok
        assert any("is not a hash" in m for m in report.messages)
        assert any("1 malformed field(s)" in m for m in report.messages)
        assert s.check(fix=True).ok
        stats = s.stats()
        assert (stats.entries, stats.api_requests) == (1, 0)
        assert s.check().messages == []


def test_close_flushes_counters_even_while_down(tmp_path: Path) -> None:
    """close() tries to write what was counted while Redis was down, whatever the interval."""
    port = free_port()
    s = RedisScoreCache(f"redis://127.0.0.1:{port}/0", retry_interval=3600)
    assert s.put_many({key(1): 0.5}, model=MODEL, api_requests=1, documents_sent=1) is False
    with RedisServer(tmp_path / "late", port=port) as late:
        s.close()
        with RedisScoreCache(late.url) as back:
            stats = back.stats()
    assert (stats.api_requests, stats.documents_sent, stats.store_errors) == (1, 1, 1)


# -- stale-if-error: scores kept past their ttl for on_error="stale" ------------------------


def test_stale_scores_are_kept_for_the_window_only(kit: Kit) -> None:
    """Past its ttl a score is a miss and no entry, yet get_stale_many finds it until
    stale_ttl has passed too; expire() deletes it only then."""
    with kit.clock() as advance, kit.make(ttl=3600, stale_ttl=600) as s:
        s.put_many({key(1): 0.5}, model=MODEL)
        assert s.get_stale_many([key(1), key(2)]) == {key(1): 0.5}  # live scores too
        advance(3601)
        assert s.get_many([key(1)]) == {}
        assert s.get_stale_many([key(1)]) == {key(1): 0.5}
        advance(60)  # Redis counts entries by expiry bucket (ttl/512 wide, ~7 s here)
        assert (s.stats().entries, s.count()) == (0, 0)
        assert s.expire() == 0
        assert s.get_stale_many([key(1)]) == {key(1): 0.5}
        advance(530)
        assert s.get_stale_many(iter([key(1)])) == {key(1): 0.5}
        advance(20)
        assert s.get_stale_many([key(1)]) == {}
        s.expire()  # disk deletes the row now; Redis has deleted the key itself
        assert (s.count(expired=True), s.count()) == (0, 0)


def test_without_stale_ttl_nothing_is_kept(kit: Kit) -> None:
    """stale_ttl=None (the default): nothing is served stale, expiry deletes at the ttl."""
    with kit.clock() as advance, kit.make(ttl=3600) as s:
        assert s.stale_ttl is None  # type: ignore[attr-defined]
        s.put_many({key(1): 0.5}, model=MODEL)
        assert s.get_stale_many([key(1)]) == {}
        advance(3601)
        assert s.get_stale_many([key(1)]) == {}
        s.expire()
        assert s.count(expired=True) == 0


def test_rewriting_a_kept_score_is_an_entry_not_a_duplicate(kit: Kit) -> None:
    """A score written again after its ttl (kept only for stale use) is a fresh entry, not a
    duplicate send; kept scores pass check() as safe."""
    with kit.clock() as advance, kit.make(ttl=3600, stale_ttl=timedelta(days=1)) as s:
        s.put_many({key(1): 0.5, key(2): 0.25}, model=MODEL)
        advance(3700)
        report = s.check()
        assert (report.ok, report.unsafe_rows) == (True, 0)
        s.put_many({key(1): 0.75}, model=MODEL)
        stats = s.stats()
        assert (stats.duplicate_sends, stats.entries) == (0, 1)
        assert s.get_many([key(1), key(2)]) == {key(1): 0.75}
        assert s.get_stale_many([key(1), key(2)]) == {key(1): 0.75, key(2): 0.25}


@pytest.mark.parametrize("stale_ttl", [0, -1, float("inf"), "1d"])
def test_bad_stale_ttl_rejected(kit: Kit, stale_ttl: object) -> None:
    """A stale_ttl that is not a positive duration is a clear ValueError."""
    with pytest.raises(ValueError, match="stale_ttl"):
        kit.make(stale_ttl=stale_ttl)


def test_on_error_stale_serves_kept_scores_during_an_outage(
    kit: Kit,
    make_reranker: Callable[..., QwenReRanker],
    server: DashScopeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DashScope down after the ttl: with on_error="stale" the kept scores are served (logged
    once, counted as stale_served, shown by `stats`); one miss without a kept score raises,
    and so does on_error="raise"."""
    docs = make_docs(7)
    with kit.clock() as advance, kit.make(ttl=3600, stale_ttl=86400) as s:
        stale = CachedReRanker(make_reranker(), s, on_error="stale")
        assert stale.on_error == "stale"
        first = stale.rerank([docs[:5]], 5)
        advance(7200)
        server.fail_next(503, times=4)  # every attempt of the one request
        with caplog.at_level(logging.WARNING, logger="rerank_cache"):
            out = stale.rerank([docs[:5]], 5)
        assert [(d.id, d.score) for d in out] == [(d.id, d.score) for d in first]
        assert caplog.text.count("past their ttl") == 1
        assert s.stats().stale_served == 5
        assert s.stats().models[MODEL].stale_served == 5
        server.fail_next(503, times=4)
        with pytest.raises(DashScopeError):
            stale.rerank([docs], 7)  # d5 and d6 were never scored
        server.fail_next(503, times=4)
        with pytest.raises(DashScopeError):
            CachedReRanker(make_reranker(), s).rerank([docs[:5]], 5)
        assert s.get_many(key_of_docs(stale, docs[:5])) == {}  # still expired, not renewed
        assert s.stats().stale_served == 5
        s.flush_stats()
    assert main([*kit.cli_args(), "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stale_served"] == 5
    assert main([*kit.cli_args(), "stats"]) == 0
    assert re.search(r"^  stale served +5$", capsys.readouterr().out, re.MULTILINE)


def test_on_error_stale_keeps_scores_fetched_before_the_failure(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """A call whose first request succeeds and second fails: the first request's scores are
    stored and used; the second request's misses are served stale."""
    docs = make_docs(8)
    with kit.clock() as advance, kit.make(ttl=3600, stale_ttl=86400) as s:
        r = CachedReRanker(make_reranker(max_concurrency=1), s, on_error="stale")
        r.rerank([docs[4:]], 4)
        advance(7200)
        small = make_reranker(max_concurrency=1, limits=_limits_of(r, 4))
        r = CachedReRanker(small, s, on_error="stale")
        server.fail_next(503, times=4, match=docs[4].field("content"))
        out = r.rerank([docs], 8)
        assert {d.id for d in out} == {d.id for d in docs}
        assert set(s.get_many(key_of_docs(r, docs[:4]))) == set(key_of_docs(r, docs[:4]))
        assert s.stats().stale_served == 4


def key_of_docs(r: CachedReRanker, docs: list[Any]) -> list[str]:
    """The store keys of ``docs`` under ``r``'s model, instruct and query."""
    return [
        score_key(r.model, r.instruct, r.query, d.field("content"), scorer=r.scorer_id)
        for d in docs
    ]


def _limits_of(r: CachedReRanker, per_request: int) -> Any:
    """``r``'s request limits with at most ``per_request`` documents a request."""
    return dataclasses.replace(r.limits, max_documents=per_request)


def test_kept_values_are_parsed_strictly(redis_server: RedisServer, ns: str) -> None:
    """Only "repr|expiry ms" exactly as written is a kept score: anything else is a miss for
    both reads, and unsafe for check()."""
    planted = ["0.5|", "0.5|01", "0.5|-5", "0.5|1e3", "0.5|12|3", "0.50|99", "0.5| 99", "|99"]
    far = int(time.time() * 1000) + 3_600_000
    with (
        redis_server.client() as client,
        RedisScoreCache(redis_server.url, namespace=ns, stale_ttl=3600) as s,
    ):
        for i, value in enumerate(planted):
            client.set(f"{ns}:s:{key(i)}", value)
        client.set(f"{ns}:s:{key(99)}", f"0.5|{far}")
        wanted = [key(i) for i in [*range(len(planted)), 99]]
        assert s.get_many(wanted) == {key(99): 0.5}
        assert s.get_stale_many(wanted) == {key(99): 0.5}
        assert s.check().unsafe_rows == len(planted)


def test_stale_read_of_a_dead_redis_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    """get_stale_many on an unreachable Redis finds nothing and logs it; it never raises."""
    port = free_port()
    with (
        caplog.at_level(logging.WARNING),
        RedisScoreCache(f"redis://127.0.0.1:{port}/0", stale_ttl=60, retry_interval=0) as s,
    ):
        assert s.get_stale_many([key(1)]) == {}
        assert "stale read failed" in caplog.text


# -- the memory tier (both stores) -----------------------------------------------------------


def _delete_behind_its_back(kit: Kit, *store_keys: str) -> None:
    """Delete scores as other software would: no clear, so no generation change."""
    if isinstance(kit, DiskKit):
        con = sqlite3.connect(kit.directory / "cache.db")
        with con:
            con.executemany("DELETE FROM Cache WHERE key = ?", [(k,) for k in store_keys])
        con.close()
    else:
        kit.delete(*store_keys)


def test_memory_tier_serves_recent_scores_and_counts_them_as_hits(
    kit: Kit, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """What a process read or wrote is served from memory; memory_entries=0 reads the store."""
    with kit.make() as store, kit.make(memory_entries=0) as plain:
        assert (store.memory_entries, plain.memory_entries) == (50_000, 0)  # type: ignore[attr-defined]
        assert store.put_many({key(1): 0.5}, model=MODEL)
        assert plain.get_many([key(1)]) == {key(1): 0.5}
        _delete_behind_its_back(kit, key(1))
        assert store.get_many([key(1)]) == {key(1): 0.5}
        assert plain.get_many([key(1)]) == {}
        reranker = cached(make_reranker, store)
        docs = make_docs(5)
        reranker.rerank([docs], 5)
        _delete_behind_its_back(kit, *(reranker_key(d.fields["content"]) for d in docs))
        reranker.rerank([docs], 5)
        assert server.stats.requests == 1
        stats = store.stats()
    assert (stats.hits, stats.misses) == (5, 5)


def reranker_key(text: str) -> str:
    return score_key(MODEL, None, QUERY, text)


def test_memory_tier_respects_each_scores_expiry(kit: Kit) -> None:
    """A score leaves memory when it expires in the store, whoever wrote it and when."""
    with kit.clock() as advance, kit.make(ttl=60) as writer:
        assert writer.put_many({key(1): 0.5}, model=MODEL)
        advance(30)
        with kit.make(ttl=60) as reader:
            assert reader.get_many([key(1)]) == {key(1): 0.5}  # now in its memory
            assert writer.put_many({key(2): 0.25}, model=MODEL)
            advance(29)
            assert reader.get_many([key(1)]) == {key(1): 0.5}
            assert writer.get_many([key(1), key(2)]) == {key(1): 0.5, key(2): 0.25}
            advance(2)  # key(1) expired: 61 s old
            assert reader.get_many([key(1)]) == {}
            assert writer.get_many([key(1), key(2)]) == {key(2): 0.25}
            advance(30)
            assert writer.get_many([key(2)]) == {}


@pytest.mark.parametrize("model", [None, "qwen3-rerank"])
def test_memory_tier_honours_a_clear_from_another_process(kit: Kit, model: str | None) -> None:
    """A clear (all, or one model) in a real second process is seen on the next call."""
    mine, other = key(1), key(2, model="qwen3-rerank")
    with kit.make() as store:
        assert store.put_many({mine: 0.5}, model=MODEL)
        assert store.put_many({other: 0.25}, model="qwen3-rerank")
        assert store.get_many([mine, other]) == {mine: 0.5, other: 0.25}
        args = ["clear", "--yes"] + ([] if model is None else ["--model", model])
        env = {k: v for k, v in os.environ.items() if k != "RERANK_CACHE_URL"}
        env["PYTHONPATH"] = SRC
        proc = run_python("-m", "rerank_cache", *kit.cli_args(), *args, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        expected = {} if model is None else {mine: 0.5}
        assert store.get_many([mine, other]) == expected
        assert store.get_many([other]) == {}
        # Reads under the new generation are kept in memory again.
        assert store.put_many({other: 0.75}, model="qwen3-rerank")
        _delete_behind_its_back(kit, other)
        assert store.get_many([other]) == {other: 0.75}


def test_memory_tier_is_bounded(kit: Kit) -> None:
    """memory_entries bounds what is kept: the most recently read or written stay."""
    with kit.make(memory_entries=3) as store:
        keys = [key(i) for i in range(10)]
        assert store.put_many({k: i / 10 for i, k in enumerate(keys)}, model=MODEL)
        _delete_behind_its_back(kit, *keys)
        assert store.get_many(keys) == {k: i / 10 for i, k in enumerate(keys) if i >= 7}


def test_memory_entries_is_validated(kit: Kit) -> None:
    """memory_entries is a count: 0 turns the tier off, negatives and non-integers fail."""
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="memory_entries"):
            kit.make(memory_entries=bad)
