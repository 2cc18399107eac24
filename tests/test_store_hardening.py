"""The disk store against a hostile or busy file: planted settings, maintenance under
contention or damage, and maintenance that never stalls writers for long (issue 13)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank_cache import CacheError, CorruptCacheError, ScoreCache, score_key
from rerank_cache.cli import main
from rerank_cache.stores import sqlite as store_sql

from .helpers import write_lock_held

# What ScoreCache writes into diskcache's Settings table (a wrong-typed value is refused).
_KNOWN = (
    "statistics",
    "tag_index",
    "eviction_policy",
    "size_limit",
    "cull_limit",
    "sqlite_auto_vacuum",
    "sqlite_cache_size",
    "sqlite_journal_mode",
    "sqlite_mmap_size",
    "sqlite_synchronous",
    "disk_min_file_size",
    "disk_pickle_protocol",
    "count",
    "size",
    "hits",
    "misses",
)
_ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.none(),
)
_UNKNOWN_ROW = st.tuples(
    st.one_of(
        st.sampled_from(["_directory", "disk_x", "_local", "timeout", "_disk", "_con", "disk_"]),
        st.text(min_size=1, max_size=12).filter(lambda k: k not in _KNOWN),
    ),
    _ANY_VALUE,
)
# Every known key takes an int or one exact string: these values are wrong for all of them.
_WRONG_ROW = st.tuples(
    st.sampled_from(_KNOWN),
    st.one_of(st.floats(allow_nan=False), st.binary(max_size=8), st.none()),
)


def _plant_setting(directory: Path, key: object, value: object) -> None:
    con = sqlite3.connect(directory / "cache.db")
    with con:
        con.execute("INSERT OR REPLACE INTO Settings (key, value) VALUES (?, ?)", (key, value))
    con.close()


def _new_store(directory: Path) -> None:
    with ScoreCache(directory) as cache:
        cache.put_many({score_key("m", None, "q", "d"): 0.5}, model="m")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_a_planted_directory_setting_never_moves_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """('_directory', elsewhere) is refused, naming check --fix, which removes it."""
    home, elsewhere = tmp_path / "scores", tmp_path / "elsewhere"
    _new_store(home)
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o777)
    _plant_setting(home, "_directory", str(elsewhere))
    with pytest.raises(CacheError, match="check --fix"):
        ScoreCache(home)
    assert list(elsewhere.iterdir()) == []
    code, _, err = _cli(capsys, "--cache-dir", str(home), "check")
    assert code == 1
    assert "check --fix" in err
    code, out, _ = _cli(capsys, "--cache-dir", str(home), "check", "--fix")
    assert code == 0
    assert "_directory" in out
    with ScoreCache(home) as cache:
        assert cache.count() == 1
    assert list(elsewhere.iterdir()) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.one_of(_UNKNOWN_ROW, _WRONG_ROW), min_size=1, max_size=3))
def test_any_foreign_setting_is_refused_and_check_fix_repairs_it(
    rows: list[tuple[object, object]],
) -> None:
    """Rows the store never writes: a CacheError naming check --fix, never a raw error;
    check --fix removes them and the store opens with its scores."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "scores"
        _new_store(home)
        for key, value in rows:
            _plant_setting(home, key, value)
        with pytest.raises(CacheError, match="check --fix"):
            ScoreCache(home)
        for command in (["check"], ["clear", "--yes"], ["clear", "--expired", "--yes"]):
            assert main(["--cache-dir", str(home), *command]) == 1
        assert main(["--cache-dir", str(home), "stats"]) == 0  # read-only: applies nothing
        assert main(["--cache-dir", str(home), "check", "--fix"]) == 0
        with ScoreCache(home) as cache:
            assert cache.directory == home
            assert cache.count() == 1
            assert cache.check().ok


def test_check_reports_and_fixes_a_setting_planted_while_open(tmp_path: Path) -> None:
    """A row planted after opening is reported by check() and removed by check(fix=True)."""
    home = tmp_path / "scores"
    with ScoreCache(home) as cache:
        _plant_setting(home, "disk_x", 1)
        report = cache.check()
        assert not report.ok
        assert any("disk_x" in m for m in report.messages)
        assert cache.check(fix=True).fixed == 1
    ScoreCache(home).close()


def test_what_the_store_writes_is_accepted(tmp_path: Path) -> None:
    """The validator accepts every row of a store ScoreCache (and diskcache) created."""
    _new_store(tmp_path / "scores")
    con = sqlite3.connect(tmp_path / "scores" / "cache.db")
    try:
        assert store_sql.unsafe_settings(con) == {}
        keys = {row[0] for row in con.execute("SELECT key FROM Settings")}
    finally:
        con.close()
    assert keys == set(_KNOWN)


# -- typed errors from maintenance ---------------------------------------------------------


def test_maintenance_under_a_held_lock_is_a_cache_error_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """clear, expire and check --fix while another process holds the write lock: CacheError."""
    home = tmp_path / "scores"
    with ScoreCache(home, timeout=0.05) as cache:
        cache.put_many({score_key("m", None, "q", "d"): 0.5}, model="m")
        with write_lock_held(home):
            for call in (cache.clear, cache.expire, lambda: cache.check(fix=True)):
                with pytest.raises(CacheError, match="try again"):
                    call()


def test_maintenance_on_a_damaged_file_is_corrupt_cache_error(tmp_path: Path) -> None:
    """stats, count, clear and expire on a file damaged under an open store: typed errors."""
    home = tmp_path / "scores"
    with ScoreCache(home) as cache:
        cache.put_many({score_key("m", None, "q", f"d{i}"): 0.5 for i in range(300)}, model="m")
        cache.close()
    db = home / "cache.db"
    data = bytearray(db.read_bytes())
    for offset in range(4096 * 2, len(data), 4096):  # every page after the first two
        data[offset : offset + 64] = b"\xff" * 64
    with ScoreCache(home, recover=False) as cache:
        db.write_bytes(bytes(data))
        for call in (
            cache.stats,
            cache.count,
            cache.clear,
            cache.expire,
            lambda: cache.count(expired=True),
        ):
            with pytest.raises(CacheError) as info:
                call()
            assert str(info.value)
            assert isinstance(info.value, CorruptCacheError) or "check" in str(info.value)


# -- maintenance in chunks -------------------------------------------------------------------


def test_expire_and_clear_commit_in_chunks(tmp_path: Path) -> None:
    """Each chunk is its own transaction: a failure in the last chunk keeps the deletions
    of the chunks before it (one big DELETE would have undone them all)."""
    home = tmp_path / "scores"
    n = store_sql.DELETE_CHUNK * 2 + 7
    with ScoreCache(home, ttl=60) as cache:
        cache.put_many({score_key("m", None, "q", f"d{i}"): 0.5 for i in range(n)}, model="m")
        con = sqlite3.connect(home / "cache.db")
        with con:  # a trigger that fails the deletion of the last row (last chunk)
            last = int(con.execute("SELECT max(rowid) FROM Cache").fetchone()[0])
            con.execute(
                f"CREATE TRIGGER stop_last AFTER DELETE ON Cache WHEN OLD.rowid = {last} "
                "BEGIN SELECT RAISE(ABORT, 'stopped'); END"
            )
        with pytest.raises(CacheError, match="expiring failed"):
            cache.expire(now=10**12)
        assert cache.count() == 7  # the first two chunks stayed deleted
        with con:
            con.execute("DROP TRIGGER stop_last")
        con.close()
        assert cache.expire(now=10**12) == 7
        cache.put_many({score_key("m", None, "q", f"d{i}"): 0.5 for i in range(n)}, model="m")
        assert cache.clear() == n
        assert cache.count() == 0
