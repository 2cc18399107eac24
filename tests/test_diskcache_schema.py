"""What the disk store relies on inside diskcache's ``cache.db``, pinned.

``rerank_cache.stores.sqlite`` reads and writes diskcache's ``Cache`` and ``Settings``
tables directly (a batched read is twice as fast as ``Cache.get`` per key). A diskcache
release that renames a column, drops an index the SQL needs, or changes a setting the
store depends on must fail here, loudly, rather than make the store quietly miss.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import diskcache
import pytest
from diskcache.core import DBNAME, MODE_RAW

from rerank_cache import ScoreCache
from rerank_cache.keys import KEY_PREFIX, KeyBuilder, model_of
from rerank_cache.stores.sqlite import DB_NAME

# Column -> declared type, in diskcache 5.6's order.
CACHE_COLUMNS = {
    "rowid": "INTEGER",
    "key": "BLOB",
    "raw": "INTEGER",
    "store_time": "REAL",
    "expire_time": "REAL",
    "access_time": "REAL",
    "access_count": "INTEGER",
    "tag": "BLOB",
    "size": "INTEGER",
    "mode": "INTEGER",
    "filename": "TEXT",
    "value": "BLOB",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ScoreCache]:
    """A real ScoreCache holding one score."""
    with ScoreCache(tmp_path / "scores", size_limit=123_456_789, ttl=3600) as made:
        made.put_many({KeyBuilder("m", None, "q").key("d"): 0.5}, model="m")
        yield made


def connect(store: ScoreCache) -> sqlite3.Connection:
    """A connection of our own to the store's file."""
    return sqlite3.connect(store.directory / DB_NAME)


def test_diskcache_is_the_pinned_major_version() -> None:
    """The SQL is written against diskcache 5 (pyproject pins <6)."""
    assert diskcache.__version__.split(".")[0] == "5"


def test_cache_table_columns(store: ScoreCache) -> None:
    """Cache has exactly the columns, and types, the store's SQL names."""
    con = connect(store)
    columns = {row[1]: row[2] for row in con.execute("PRAGMA table_info(Cache)")}
    con.close()
    assert columns == CACHE_COLUMNS


def test_settings_table_columns(store: ScoreCache) -> None:
    """Settings is a key/value table."""
    con = connect(store)
    columns = [row[1] for row in con.execute("PRAGMA table_info(Settings)")]
    con.close()
    assert columns == ["key", "value"]


def test_indexes_the_sql_relies_on(store: ScoreCache) -> None:
    """The UPSERT needs the unique (key, raw) index; stats and tidying use expire/store time."""
    con = connect(store)
    indexes = {
        name: (unique, [col[2] for col in con.execute(f"PRAGMA index_info({name})")])
        for _, name, unique, *_ in con.execute("PRAGMA index_list(Cache)")
    }
    con.close()
    assert indexes["Cache_key_raw"] == (1, ["key", "raw"])
    assert indexes["Cache_expire_time"] == (0, ["expire_time"])
    assert indexes["Cache_store_time"] == (0, ["store_time"])


def test_settings_the_store_sets_and_relies_on(store: ScoreCache) -> None:
    """What ScoreCache passes at open is persisted, and count/size exist for check --fix."""
    con = connect(store)
    settings = dict(con.execute("SELECT key, value FROM Settings"))
    con.close()
    assert {name: settings[name] for name in ("statistics", "tag_index", "cull_limit")} == {
        "statistics": 0,  # reads stay read-only
        "tag_index": 0,
        "cull_limit": 0,  # eviction runs after the write commits, not inside set()
    }
    assert settings["eviction_policy"] == "least-recently-stored"
    assert settings["size_limit"] == 123_456_789
    assert settings["sqlite_journal_mode"] == "wal"  # readers never block writers
    assert settings["count"] == 1  # kept by diskcache's triggers, also for our UPSERT
    assert settings["size"] == 0  # nothing stored in files


def test_rows_written_by_sql_are_rows_diskcache_reads(store: ScoreCache) -> None:
    """A score written by the store's UPSERT is an inline raw float to diskcache itself."""
    key = KeyBuilder("m", None, "q").key("d")
    con = connect(store)
    raw, mode, filename = con.execute(
        "SELECT raw, mode, filename FROM Cache WHERE key = ?", (key,)
    ).fetchone()
    con.close()
    assert (raw, mode, filename) == (1, MODE_RAW, None)
    assert store._cache.get(key) == 0.5


def test_sql_reads_models_as_keys_py_does(tmp_path: Path) -> None:
    """count/clear by model, and stats, agree with keys.model_of, for awkward model names."""
    models = ["m", "m:x", "10", "1", "a;b", "gte-rerank-v2"]
    with ScoreCache(tmp_path / "scores") as store:
        for n, model in enumerate(models, start=1):
            builder = KeyBuilder(model, None, "q")
            keys = {builder.key(f"doc {i}"): 0.25 for i in range(n)}
            assert {model_of(key) for key in keys} == {model}
            store.put_many(keys, model=model)
        # A key of another (future) format is never counted as anyone's.
        store.put_many({f"{KEY_PREFIX[:-1]}2:m:{'0' * 32}": 0.5}, model="m")
        assert {name: m.entries for name, m in store.stats().models.items()} == {
            model: n for n, model in enumerate(models, start=1)
        }
        for n, model in enumerate(models, start=1):
            assert store.count(model=model) == n
        assert store.clear(model="m") == 1
        assert store.count(model="m:x") == 2
        assert store.count() == sum(range(2, len(models) + 1)) + 1


def test_the_store_names_diskcaches_file() -> None:
    """The file the store opens, sizes, checks and moves aside is the one diskcache writes."""
    assert DB_NAME == DBNAME
