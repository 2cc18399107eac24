"""The caching layer: only uncached pairs reach DashScope, and the store is safe."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from rerank_cache import (
    APIError,
    CacheDirectoryError,
    CachedReRanker,
    CacheError,
    CorruptCacheError,
    Doc,
    QwenReRanker,
    RetryPolicy,
    ScoreCache,
    score_key,
)
from rerank_cache.client.results import BatchResult
from rerank_cache.keys import KeyBuilder
from rerank_cache.planning import plan_batches
from rerank_cache.stores.disk import read_stats
from rerank_cache.testing import DashScopeServer, score

from .conftest import API_KEY
from .test_reranker import make_docs

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cached(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    query: str = "vector database cache",
    **kwargs: object,
) -> CachedReRanker:
    return CachedReRanker(make_reranker(query, **kwargs), cache)


def test_second_identical_rerank_sends_nothing(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """A repeated rerank is served from the cache with identical results and floats."""
    r = cached(make_reranker, cache)
    docs = make_docs(40)
    first = r.rerank([docs], 40)
    sent = server.stats.documents
    second = r.rerank([docs], 40)
    assert server.stats.documents == sent == 40
    assert [(d.id, d.score) for d in first] == [(d.id, d.score) for d in second]
    for d in second:  # the cached float is the one DashScope returned, bit for bit
        assert d.score == score("vector database cache", d.field("content"))


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


def test_overlap_sends_only_new_texts(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """An overlapping candidate set sends only the texts not yet cached."""
    r = cached(make_reranker, cache)
    docs = make_docs(30)
    r.rerank([docs[:20]])
    server.reset_stats()
    r.rerank([docs[10:30]])
    (req,) = server.requests_log
    assert sorted(req.documents) == sorted(d.field("content") for d in docs[20:30])


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


def test_entries_expire_after_ttl(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """After the TTL a score is a miss and is fetched again."""
    docs = make_docs(5)
    with (
        freeze_time("2026-01-01 00:00:00") as clock,
        ScoreCache(tmp_path / "ttl", ttl=timedelta(hours=1)) as store,
    ):
        r = CachedReRanker(make_reranker(), store)
        r.rerank([docs])
        clock.tick(timedelta(minutes=59))
        r.rerank([docs])
        assert server.stats.requests == 1
        clock.tick(timedelta(minutes=2))
        assert store.stats().expired_entries == 5
        r.rerank([docs])
        assert server.stats.requests == 2
        assert store.stats().entries == 5


def test_ttl_none_never_expires(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """ttl=None keeps scores forever."""
    with freeze_time("2026-01-01") as clock, ScoreCache(tmp_path / "forever", ttl=None) as store:
        r = CachedReRanker(make_reranker(), store)
        r.rerank([make_docs(3)])
        clock.tick(timedelta(days=3650))
        r.rerank([make_docs(3)])
    assert server.stats.requests == 1


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), "1h"])
def test_bad_ttl_rejected(tmp_path: Path, ttl: object) -> None:
    """A TTL that is not a positive duration is a clear ValueError."""
    with pytest.raises(ValueError, match="ttl"):
        ScoreCache(tmp_path / "c", ttl=ttl)  # type: ignore[arg-type]


def test_scores_survive_into_a_new_process(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """Scores written by one process are hits in another."""
    directory = tmp_path / "shared"
    with ScoreCache(directory) as store:
        CachedReRanker(make_reranker(), store).rerank([make_docs(20)])
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {SRC!r})
        from rerank_cache import CachedReRanker, QwenReRanker, ScoreCache
        from tests.test_reranker import make_docs
        with ScoreCache({str(directory)!r}) as store:
            r = CachedReRanker(QwenReRanker("vector database cache", rerank_field="content",
                api_key={API_KEY!r}, base_url={server.base_url!r}), store)
            out = r.rerank([make_docs(20)], 20)
            print(json.dumps([[d.id, d.score] for d in out]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert server.stats.requests == 1
    ids_scores = json.loads(proc.stdout)
    assert len(ids_scores) == 20
    assert ids_scores[0][1] == max(s for _, s in ids_scores)


def test_partial_failure_keeps_completed_requests(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """When request 3 of 4 fails, the scores of the requests that succeeded are kept."""
    docs = make_docs(1600, chars=400, seed=7)
    r = cached(make_reranker, cache, max_concurrency=1)
    plan = r.prepare([docs])
    groups = plan_batches(r.query, plan.texts, r.reranker.limits)
    assert len(groups) >= 4
    poison = plan.texts[groups[2][0]]
    server.fail_next(400, match=poison)
    with pytest.raises(APIError):
        r.rerank([docs])
    stored = cache.stats().entries
    assert stored >= len(groups[0]) + len(groups[1])
    server.reset_stats()
    r.rerank([docs], 5)
    assert server.stats.documents == len(plan.texts) - stored


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


def test_stats_match_server(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """Hits, misses, requests, documents and tokens match what the server counted."""
    r = cached(make_reranker, cache)
    docs = make_docs(700, chars=300, seed=11)
    r.rerank([docs[:600]])
    r.rerank([docs[300:700]])
    r.with_query("other query").rerank([docs[:10]])
    stats = cache.stats()
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


def test_stats_are_shared_across_instances(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """Counters persist: a second ScoreCache on the same directory sees them."""
    with ScoreCache(tmp_path / "s") as a:
        r = CachedReRanker(make_reranker(), a)
        r.rerank([make_docs(10)])
        r.rerank([make_docs(10)])
    with ScoreCache(tmp_path / "s") as b:
        stats = b.stats()
    assert (stats.hits, stats.misses, stats.api_requests) == (10, 10, 1)


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
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=5)
            results[i] = r.with_query(r.query).rerank([sets[i]], 40)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    sent = [d for req in server.requests_log for d in req.documents]
    assert len(sent) == len(set(sent)) == 60
    for i in range(2):
        assert len(results[i]) == 40
        assert all(d.score == score(r.query, d.field("content")) for d in results[i])


HAMMER = textwrap.dedent("""
    import json, random, sys
    sys.path.insert(0, sys.argv[1])
    from rerank_cache import CachedReRanker, Doc, QwenReRanker, ScoreCache
    directory, base_url, seed = sys.argv[2], sys.argv[3], int(sys.argv[4])
    rng = random.Random(seed)
    texts = [f"shared text {i} about vector caches" for i in range(120)]
    errors = 0
    with ScoreCache(directory) as store:
        base = CachedReRanker(QwenReRanker("q0", rerank_field="t", api_key="sk-hammer",
                                           base_url=base_url), store)
        for round_ in range(40):
            picked = rng.sample(range(120), 30)
            docs = [Doc(f"d{i}", fields={"t": texts[i]}) for i in picked]
            try:
                base.with_query(f"q{round_ % 3}").rerank([docs], 5)
            except Exception as exc:
                errors += 1
                print(repr(exc), file=sys.stderr)
    print(json.dumps({"errors": errors}))
""")


def test_four_processes_hammering_one_cache(tmp_path: Path, server: DashScopeServer) -> None:
    """Four processes on one cache: no errors, every pair stored, duplicates counted."""
    directory = tmp_path / "hammer"
    ScoreCache(directory).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, SRC, str(directory), server.base_url, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["errors"] == 0, err
    texts = [f"shared text {i} about vector caches" for i in range(120)]
    with ScoreCache(directory) as store:
        wanted = {
            score_key("gte-rerank-v2", None, f"q{q}", t): (f"q{q}", t)
            for q in range(3)
            for t in texts
        }
        requested = {(req.query, d) for req in server.requests_log for d in req.documents}
        expected = {k for k, pair in wanted.items() if pair in requested}
        found = store.get_many(expected)
        assert set(found) == expected  # nothing sent was lost
        for k, value in found.items():
            assert value == score(*wanted[k])
        stats = store.stats()
    assert stats.documents_sent == server.stats.documents
    assert stats.documents_sent - stats.duplicate_sends == stats.entries == len(expected)


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


# -- safety --------------------------------------------------------------------------------


def _plant(
    directory: Path,
    key: str,
    *,
    mode: int,
    value: object,
    filename: str | None = None,
    raw: int = 1,
) -> None:
    con = sqlite3.connect(directory / "cache.db")
    with con:
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, "
            "tag, size, mode, filename, value) VALUES (?, ?, 0, NULL, 0, 0, NULL, 0, ?, ?, ?)",
            (key, raw, mode, filename, value),
        )
    con.close()


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(self.marker),))  # type: ignore[return-value]


def test_planted_pickle_never_executes(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    tmp_path: Path,
) -> None:
    """A pickled row planted in cache.db is never unpickled and reads as a miss."""
    marker = tmp_path / "pwned"
    r = cached(make_reranker, cache)
    docs = make_docs(3)
    key = score_key(r.model, None, r.query, docs[0].field("content"))
    _plant(cache.directory, key, mode=4, value=pickle.dumps(_Boom(str(marker))))
    out = r.rerank([docs])
    assert not marker.exists()
    assert len(out) == 3
    assert docs[0].field("content") in server.requests_log[0].documents  # it was a miss
    assert cache.get_many([key]) == {key: score(r.query, docs[0].field("content"))}
    assert not marker.exists()


def test_planted_file_reference_is_not_read_or_deleted(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, tmp_path: Path
) -> None:
    """A row naming a file is a miss; overwriting it does not delete that file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    r = cached(make_reranker, cache)
    docs = make_docs(2)
    key = score_key(r.model, None, r.query, docs[0].field("content"))
    _plant(cache.directory, key, mode=2, value=None, filename=str(victim))
    assert cache.get_many([key]) == {}
    r.rerank([docs])
    cache.expire(now=1e12)
    cache.clear()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("value", ["0.9", b"\x80\x04", 7])
def test_non_float_rows_are_misses(cache: ScoreCache, value: object) -> None:
    """Text, blob or integer values planted under a key read as misses."""
    _plant(cache.directory, "1:m:" + "a" * 32, mode=1, value=value)
    assert cache.get_many(["1:m:" + "a" * 32]) == {}
    report = cache.check()
    assert report.unsafe_rows == 1
    assert not report.ok
    fixed = cache.check(fix=True)
    assert fixed.fixed == 1
    assert fixed.ok
    assert cache.check().unsafe_rows == 0


def test_directory_created_0700(tmp_path: Path) -> None:
    """A new cache directory is private to its owner."""
    with ScoreCache(tmp_path / "new" / "scores") as store:
        assert (store.directory.stat().st_mode & 0o777) == 0o700


def test_symlinked_directory_refused(tmp_path: Path) -> None:
    """A symlink as the cache directory is refused with a clear error."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(CacheDirectoryError, match="symbolic link"):
        ScoreCache(link)


def test_world_writable_directory_refused(tmp_path: Path) -> None:
    """A directory others can write is refused, with the chmod to fix it."""
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(CacheDirectoryError, match="chmod 700"):
        ScoreCache(d)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root to give a directory to another user",
)
def test_foreign_owned_directory_refused(tmp_path: Path) -> None:
    """A directory owned by another user is refused."""
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, 4242)
    with pytest.raises(CacheDirectoryError, match="owned by uid 4242"):
        ScoreCache(d)


def test_corrupt_file_is_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A garbage cache.db is moved aside with a logged explanation; the cache starts empty."""
    d = tmp_path / "corrupt"
    ScoreCache(d).close()
    (d / "cache.db").write_bytes(b"this is not a database" * 100)
    for extra in ("cache.db-wal", "cache.db-shm"):
        (d / extra).unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR), ScoreCache(d) as store:
        assert store.stats().entries == 0
    assert "damaged" in caplog.text
    assert list(d.glob("cache.db.corrupt-*"))


def test_corrupt_file_without_recovery_raises_clearly(tmp_path: Path) -> None:
    """recover=False raises CorruptCacheError naming the recovery command."""
    d = tmp_path / "corrupt2"
    ScoreCache(d).close()
    (d / "cache.db").write_bytes(b"garbage" * 500)
    with pytest.raises(CorruptCacheError, match="check --fix"):
        ScoreCache(d, recover=False)


def test_lock_timeout_fails_open(
    make_reranker: Callable[..., QwenReRanker],
    tmp_path: Path,
    server: DashScopeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When another process holds the write lock, the rerank still succeeds via the API."""
    d = tmp_path / "locked"
    with ScoreCache(d, timeout=0.05) as store:
        r = CachedReRanker(make_reranker(), store)
        blocker = sqlite3.connect(d / "cache.db", timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with caplog.at_level(logging.WARNING):
                out = r.rerank([make_docs(4)], 4)
        finally:
            blocker.rollback()
            blocker.close()
        assert len(out) == 4
        assert "continuing without the cache" in caplog.text
        stats = store.stats()
        assert stats.store_errors >= 1
        assert stats.entries == 0
        assert stats.api_requests == 1  # usage survived the failed write


def test_clear_by_model_and_expire(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> None:
    """clear(model) removes only that model's scores; expire() removes only expired ones."""
    cached(make_reranker, cache, model="qwen3-rerank").rerank([make_docs(4)])
    cached(make_reranker, cache, model="gte-rerank-v2").rerank([make_docs(6)])
    assert cache.clear(model="qwen3-rerank") == 4
    stats = cache.stats()
    assert stats.entries == 6
    assert {m for m, s in stats.models.items() if s.entries} == {"gte-rerank-v2"}
    assert cache.expire() == 0
    assert cache.expire(now=1e12) == 6
    assert cache.clear() == 0


def test_each_request_is_stored_as_it_completes(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """A fast request's scores are stored while a slow one is still in flight."""
    docs = make_docs(450, chars=400, seed=21)
    r = cached(make_reranker, cache, max_concurrency=3)
    plan = r.prepare([docs])
    groups = plan_batches(r.query, plan.texts, r.reranker.limits)
    assert len(groups) == 3
    slow_text = plan.texts[groups[0][0]]
    server.delay_next(1.0, match=slow_text)
    kb = KeyBuilder(r.model, None, r.query)
    seen: list[tuple[int, int, int]] = []  # (requests answered, batch size, batch in store)

    def on_batch(batch: BatchResult) -> None:
        stored = cache.get_many([kb.key(t) for t in batch.texts])
        seen.append((len(server.requests_log), len(batch.texts), len(stored)))

    r.score_texts(plan.texts, on_batch=on_batch)
    assert len(seen) == 3
    answered, size, in_store = seen[0]
    assert answered < 3  # the slow request was still in flight ...
    assert in_store == size  # ... and the first batch was already in the store


def test_damage_inside_the_file_fails_open_and_check_fix_repairs(
    make_reranker: Callable[..., QwenReRanker],
    tmp_path: Path,
    server: DashScopeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A damaged page: reads fail open with the fix in the log; check raises; check --fix
    moves the file aside and the cache works again."""
    d = tmp_path / "damaged"
    docs = make_docs(3000, chars=300, seed=8)
    with ScoreCache(d) as store:
        CachedReRanker(make_reranker(), store).rerank([docs])
    db = d / "cache.db"
    assert not (d / "cache.db-wal").exists() or (d / "cache.db-wal").stat().st_size == 0
    with db.open("r+b") as f:
        f.seek(db.stat().st_size // 2)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    with ScoreCache(d) as store, caplog.at_level(logging.WARNING):
        r = CachedReRanker(make_reranker(), store)
        assert len(r.rerank([docs], 5)) == 5  # answered through the API
        assert "check --fix" in caplog.text
        with pytest.raises(CorruptCacheError, match="check --fix"):
            store.check()
        report = store.check(fix=True)
        assert report.ok
        assert report.fixed == 1
        assert list(d.glob("cache.db.corrupt-*"))
        r.rerank([docs[:10]])
        server.reset_stats()
        r.rerank([docs[:10]])
        assert server.stats.requests == 0


def test_only_real_corruption_counts_as_damage() -> None:
    """Locks and I/O errors are not mistaken for a damaged file."""
    from rerank_cache.stores.disk import _is_corruption

    assert _is_corruption(sqlite3.DatabaseError("file is not a database"))
    assert not _is_corruption(sqlite3.OperationalError("database is locked"))
    assert not _is_corruption(sqlite3.OperationalError("disk I/O error"))


def test_stats_have_no_anonymous_model(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """Store errors are counted in the totals, not under an empty model name."""
    d = tmp_path / "errs"
    with ScoreCache(d, timeout=0.01) as store:
        blocker = sqlite3.connect(d / "cache.db", timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            CachedReRanker(make_reranker(), store).rerank([make_docs(2)])
        finally:
            blocker.rollback()
            blocker.close()
        stats = store.stats()
    assert stats.store_errors >= 1
    assert "" not in stats.models


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


def test_size_limit_evicts_oldest_not_newest(tmp_path: Path) -> None:
    """Crossing size_limit evicts the oldest scores; a batch never evicts itself."""
    with ScoreCache(tmp_path / "small", size_limit=500_000) as store:
        batches = [
            {score_key("m", None, f"q{b}", f"doc {i}"): 0.25 for i in range(500)} for b in range(10)
        ]
        for batch in batches:
            assert store.put_many(batch, model="m")
            assert len(store.get_many(batch)) == 500  # each batch survives whole
            assert store._cache.volume() <= 500_000
        stats = store.stats()
    assert 500 < stats.entries < 5000  # older ones made room, no more than needed


def test_expired_rows_are_tidied_by_writes(tmp_path: Path) -> None:
    """Each write deletes up to as many expired rows as it stores."""
    with freeze_time("2026-01-01") as clock, ScoreCache(tmp_path / "tidy", ttl=60) as store:
        store.put_many({score_key("m", None, "q", f"old {i}"): 0.5 for i in range(100)}, model="m")
        clock.tick(120)
        store.put_many({score_key("m", None, "q", f"new {i}"): 0.5 for i in range(40)}, model="m")
        stats = store.stats()
    assert stats.expired_entries == 60
    assert stats.entries == 40


def test_stats_count_models_whose_names_nest(tmp_path: Path) -> None:
    """Per-model entries stay exact when one model name is a prefix of another."""
    with ScoreCache(tmp_path / "models") as store:
        for model, n in (("a", 3), ("a:b", 5), ("ab", 2), ("b", 4)):
            store.put_many(
                {score_key(model, None, "q", f"d{i}"): 0.5 for i in range(n)}, model=model
            )
        stats = store.stats()
    assert {m: s.entries for m, s in stats.models.items()} == {"a": 3, "a:b": 5, "ab": 2, "b": 4}
    assert stats.entries == 14


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


def test_waiters_share_the_owners_failure(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    sleeps: object,
) -> None:
    """During an outage, threads waiting on the same pairs get the owner's error instead of
    each repeating the whole retry cycle."""
    server.latency = 0.3
    server.fail_next(503, times=100)
    r = cached(make_reranker, cache, retry=RetryPolicy(sleep=sleeps, max_attempts=2))  # type: ignore[arg-type]
    docs = make_docs(5)
    barrier = threading.Barrier(4)
    outcomes: list[BaseException | None] = []

    def work() -> None:
        barrier.wait(timeout=5)
        try:
            r.with_query(r.query).rerank([docs])
            outcomes.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcomes.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == 4
    assert all(isinstance(o, APIError) and o.status == 503 for o in outcomes), outcomes
    assert server.stats.requests == 2  # one owner, two attempts; the others waited


def test_all_hits_never_wait_for_a_lock(
    make_reranker: Callable[..., QwenReRanker], tmp_path: Path, server: DashScopeServer
) -> None:
    """While another process holds the write lock, all-hit reranks still answer at once and
    keep their counts for later (no counter flush waits on the request path)."""
    d = tmp_path / "busy"
    with ScoreCache(d, stats_flush_interval=0, timeout=600) as store:
        r = CachedReRanker(make_reranker(), store)
        docs = make_docs(5)
        r.rerank([docs])
        blocker = sqlite3.connect(d / "cache.db", timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            worker = threading.Thread(target=lambda: [r.rerank([docs]) for _ in range(3)])
            worker.start()
            worker.join(timeout=30)  # a hang guard, not a timing: the old code waited 600 s
            assert not worker.is_alive()
        finally:
            blocker.rollback()
            blocker.close()
            worker.join(timeout=60)
        assert store.stats().hits == 15  # counted in memory meanwhile
        store.flush_stats()
        assert read_stats(d).hits == 15


def test_opening_a_locked_cache_honours_timeout(tmp_path: Path) -> None:
    """Opening while another process holds the write lock gives up after `timeout` (at least
    2 s) with a clear error, not after diskcache's fixed 60 s, and leaves the files alone."""
    d = tmp_path / "held"
    ScoreCache(d).close()
    blocker = sqlite3.connect(d / "cache.db", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    result: list[BaseException | None] = []

    def open_it() -> None:
        try:
            ScoreCache(d, timeout=0.2).close()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            result.append(exc)

    worker = threading.Thread(target=open_it)
    worker.start()
    worker.join(timeout=30)  # a hang guard: diskcache alone would wait 60 s
    blocker.rollback()
    blocker.close()
    worker.join(timeout=90)
    assert len(result) == 1
    assert isinstance(result[0], CacheError)
    assert "locked" in str(result[0])
    assert not list(d.glob("cache.db.corrupt-*"))


def test_eviction_never_deletes_a_file_a_row_names(tmp_path: Path) -> None:
    """A planted row naming a file, evicted when the store outgrows size_limit, leaves the
    file alone (diskcache's own Disk would delete it)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "evicting"
    with ScoreCache(d, size_limit=200_000) as store:
        _plant(store.directory, "1:m:" + "b" * 32, mode=2, value=None, filename=str(victim))
        for b in range(10):
            store.put_many(
                {score_key("m", None, f"q{b}", f"doc {i}"): 0.5 for i in range(500)}, model="m"
            )
        assert store.get_many(["1:m:" + "b" * 32]) == {}
        store.check(fix=True)
        store.clear()
    assert victim.read_text() == "precious"


def test_safe_disk_refuses_everything_but_inline_floats(tmp_path: Path) -> None:
    """Through diskcache's own API too: pickles and file rows read as misses, never run;
    nothing but finite floats can be stored; no file is ever removed."""
    import diskcache

    from rerank_cache.stores.safedisk import SafeDisk, UnsafeRowError

    marker = tmp_path / "pwned"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "raw"
    ScoreCache(d).close()
    _plant(d, "pickled", mode=4, value=pickle.dumps(_Boom(str(marker))))
    _plant(d, "file", mode=2, value=None, filename=str(victim))
    with diskcache.Cache(str(d), disk=SafeDisk) as raw:
        assert raw.get("pickled") is None
        assert raw.get("file") is None
        raw.set("ok", 0.25)
        assert raw.get("ok") == 0.25
        for bad in ("text", b"bytes", float("nan"), 1):
            with pytest.raises(TypeError):
                raw.set("bad", bad)
        disk = SafeDisk(str(d))
        with pytest.raises(UnsafeRowError):
            disk.fetch(4, None, pickle.dumps(1), False)
        with pytest.raises(UnsafeRowError):
            disk.get(b"k", False)
        disk.remove(str(victim))
    assert not marker.exists()
    assert victim.read_text() == "precious"
