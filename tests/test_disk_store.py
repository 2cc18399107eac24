"""What only the disk store has: SafeDisk and planted rows, the directory checks, a damaged or
locked file, size limits, and several processes sharing one file.

Behaviour both stores share is in ``test_store_contract.py``.
"""

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
from pathlib import Path

import pytest
from freezegun import freeze_time

from rerank_cache import (
    CacheDirectoryError,
    CachedReRanker,
    CacheError,
    CorruptCacheError,
    QwenReRanker,
    ScoreCache,
    read_stats,
    score_key,
)
from rerank_cache.keys import scorer_id
from rerank_cache.testing import DashScopeServer, score

from .helpers import SRC, cached, make_docs, plant_row, write_lock_held


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
    key = score_key(r.model, None, r.query, docs[0].field("content"), scorer=r.scorer_id)
    plant_row(cache.directory, key, mode=4, value=pickle.dumps(_Boom(str(marker))))
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
    key = score_key(r.model, None, r.query, docs[0].field("content"), scorer=r.scorer_id)
    plant_row(cache.directory, key, mode=2, value=None, filename=str(victim))
    assert cache.get_many([key]) == {}
    r.rerank([docs])
    cache.expire(now=1e12)
    cache.clear()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("memory_entries", [0, 100])
def test_planted_values_that_are_not_finite_floats_read_as_misses(
    tmp_path: Path, memory_entries: int
) -> None:
    """Rows planted with inf, -inf, an integer, text or bytes as the value are misses on
    every read path (with and without the memory tier), among real scores that are hits."""
    d = tmp_path / "planted"
    keys = [score_key("m", None, "q", f"doc {i}") for i in range(8)]
    with ScoreCache(d, memory_entries=memory_entries) as store:
        store.put_many({keys[0]: 0.5, keys[1]: -0.0}, model="m")
        for key, value in zip(
            keys[2:], [float("inf"), float("-inf"), 3, "0.7", b"\x00", None], strict=True
        ):
            plant_row(d, key, value=value)
        for _ in range(2):  # the second read is served from memory where there is a tier
            found = store.get_many(keys)
            assert found == {keys[0]: 0.5, keys[1]: -0.0}
            assert all(type(v) is float for v in found.values())


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
    plant_row(d, "pickled", mode=4, value=pickle.dumps(_Boom(str(marker))))
    plant_row(d, "file", mode=2, value=None, filename=str(victim))
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


def test_eviction_never_deletes_a_file_a_row_names(tmp_path: Path) -> None:
    """A planted row naming a file, evicted when the store outgrows size_limit, leaves the
    file alone (diskcache's own Disk would delete it)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "evicting"
    with ScoreCache(d, size_limit=200_000) as store:
        plant_row(store.directory, "2:m:" + "b" * 32, mode=2, value=None, filename=str(victim))
        for b in range(10):
            store.put_many(
                {score_key("m", None, f"q{b}", f"doc {i}"): 0.5 for i in range(500)}, model="m"
            )
        assert store.get_many(["2:m:" + "b" * 32]) == {}
        store.check(fix=True)
        store.clear()
    assert victim.read_text() == "precious"


def test_directory_created_0700(tmp_path: Path) -> None:
    """A new cache directory is private to its owner."""
    with ScoreCache(tmp_path / "new" / "scores") as store:
        assert (store.directory.stat().st_mode & 0o777) == 0o700


def test_parents_created_0700_even_with_umask_000(tmp_path: Path) -> None:
    """Missing parents of the cache directory are private too, whatever the umask."""
    old = os.umask(0)
    try:
        with ScoreCache(tmp_path / "a" / "b" / "scores") as store:
            directory = store.directory
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", directory):
        assert (path.stat().st_mode & 0o777) == 0o700, path


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
    from rerank_cache.stores.disk_admin import is_corruption

    assert is_corruption(sqlite3.DatabaseError("file is not a database"))
    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    assert not is_corruption(sqlite3.OperationalError("disk I/O error"))


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
        worker = threading.Thread(target=lambda: [r.rerank([docs]) for _ in range(3)])
        try:
            with write_lock_held(d):
                worker.start()
                worker.join(timeout=30)  # a hang guard, not a timing: the old code waited 600 s
                assert not worker.is_alive()
        finally:
            worker.join(timeout=60)
        assert store.stats().hits == 15  # counted in memory meanwhile
        store.flush_stats()
        assert read_stats(d).hits == 15


def test_opening_a_locked_cache_honours_timeout(tmp_path: Path) -> None:
    """Opening while another process holds the write lock gives up after `timeout` (at least
    2 s) with a clear error, not after diskcache's fixed 60 s, and leaves the files alone."""
    d = tmp_path / "held"
    ScoreCache(d).close()
    result: list[BaseException | None] = []

    def open_it() -> None:
        try:
            ScoreCache(d, timeout=0.2).close()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            result.append(exc)

    worker = threading.Thread(target=open_it)
    with write_lock_held(d):
        worker.start()
        worker.join(timeout=30)  # a hang guard: diskcache alone would wait 60 s
    worker.join(timeout=90)
    assert len(result) == 1
    assert isinstance(result[0], CacheError)
    assert "locked" in str(result[0])
    assert not list(d.glob("cache.db.corrupt-*"))


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
            score_key("gte-rerank-v2", None, f"q{q}", t, scorer=scorer_id(server.base_url)): (
                f"q{q}",
                t,
            )
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
