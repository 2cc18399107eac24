"""Every SQL statement the disk store runs, on diskcache's tables and on our counters table.

diskcache has no batched read or write; reading 100 keys one ``get`` at a time costs about
7 µs a key, so :class:`~rerank_cache.stores.disk.ScoreCache` reads and writes diskcache's
``Cache`` table directly, through diskcache's own connection and inside its transactions.
This module is the one place that knows that table's columns (and ``Settings``'s):
``tests/test_diskcache_schema.py`` pins them, so a diskcache release that changes them
fails loudly. Each function takes the ``sqlite3`` connection to run on.

Only finite floats are ever served as scores, under raw keys: the scores' reads check the
values they fetch (in Python, after one SELECT), and scans, exports and maintenance use
``_SAFE_ROW`` (what :class:`~rerank_cache.stores.safedisk.SafeDisk` writes: also mode 1 and
no file name; ``check`` reports any other row as unsafe). Nothing is unpickled and no file is
opened, whatever a row holds. Keys are parsed only with what :mod:`rerank_cache.keys` says
of their format.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..keys import HASH_DIGITS, KEY_PREFIX, key_range, model_of

#: The file diskcache keeps a cache in, inside its directory (its ``DBNAME``; a test pins it).
DB_NAME = "cache.db"

__all__ = [
    "CLAIMS_TABLE",
    "COUNTERS_TABLE",
    "CREATE_CLAIMS_TABLE",
    "CREATE_COUNTERS_TABLE",
    "DB_NAME",
    "DELETE_CHUNK",
    "add_counters",
    "add_counters_to",
    "claim_keys",
    "claimed_keys",
    "count_rows",
    "count_scores",
    "count_unsafe",
    "counters_table_exists",
    "delete_expired",
    "delete_scores",
    "delete_settings",
    "delete_unsafe",
    "entries",
    "get_entries",
    "get_scores",
    "integrity_check",
    "live_keys",
    "live_scores_after",
    "lock_and_release",
    "read_counters",
    "release_keys",
    "reset_count_settings",
    "set_busy_timeout",
    "tidy_expired",
    "unsafe_settings",
    "upsert_expiring",
    "upsert_scores",
]

#: Our table of usage counters, beside diskcache's in ``cache.db``.
COUNTERS_TABLE = "RerankCacheCounters"
CREATE_COUNTERS_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {COUNTERS_TABLE} ("
    " model TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,"
    " PRIMARY KEY (model, name))"
)

_LIVE = "(expire_time IS NULL OR expire_time > ?)"
_SAFE_ROW = "raw = 1 AND mode = 1 AND filename IS NULL AND typeof(value) = 'real'"
#: Rows one maintenance DELETE removes (one transaction): a few tens of milliseconds of
#: write lock, so a concurrent writer never waits long for ``clear`` or ``expire``.
DELETE_CHUNK = 5_000
_CHUNK = 500  # keys per "IN (...)": well under SQLite's limit of bound parameters
# The sizes a read's "IN (...)" is padded to (the largest is also its chunk size): at most
# 7 keys of padding up to 128 keys, then at most 15, 31 or 63 (under 12 %); 40 statements.
_IN_SIZES = (
    *range(8, 129, 8),
    *range(144, 257, 16),
    *range(288, 513, 32),
    *range(576, 1025, 64),
)
# The size a chunk of n keys is padded to, by n.
_IN_SIZE_FOR = [next(size for size in _IN_SIZES if size >= n) for n in range(_IN_SIZES[-1] + 1)]
# A key is KEY_PREFIX + model + ":" + HASH_DIGITS hex digits; SQLite's substr counts from 1.
_MODEL = f"substr(key, {len(KEY_PREFIX) + 1}, length(key) - {len(KEY_PREFIX) + 1 + HASH_DIGITS})"
# Bind KEY_PREFIX to the "?": only current-format keys have a model.
_CURRENT = f"substr(key, 1, {len(KEY_PREFIX)}) = ?"


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _of_model(model: str | None) -> tuple[str, tuple[Any, ...]]:
    """An ``AND ...`` to add to a ``WHERE`` (and its values): only ``model``'s keys."""
    if model is None:
        return "", ()
    return f" AND {_MODEL} = ? AND {_CURRENT}", (model, KEY_PREFIX)


# -- opening ---------------------------------------------------------------------------------


def lock_and_release(con: sqlite3.Connection) -> None:
    """Take the write lock and release it at once: returns once other writers are done."""
    con.execute("BEGIN IMMEDIATE")
    con.execute("ROLLBACK")


def counters_table_exists(con: sqlite3.Connection) -> bool:
    """Whether ``cache.db`` has our counters table (run :data:`CREATE_COUNTERS_TABLE` if not)."""
    return bool(
        con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (COUNTERS_TABLE,)
        ).fetchone()
    )


def set_busy_timeout(con: sqlite3.Connection, seconds: float) -> None:
    """How long a statement waits for another process's lock (0: fail at once)."""
    con.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")


# -- scores ----------------------------------------------------------------------------------


def _padded(keys: list[str], now: float) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """``keys`` in chunks, each padded with its last key to one of :data:`_IN_SIZES`, as the
    read's arguments (the keys, then ``now``).

    Padding keeps the number of distinct statements to a few dozen, so sqlite3's statement
    cache keeps every one of them prepared however the candidate counts vary (a duplicate
    in an ``IN`` list changes nothing); the sizes are close together, so the padding costs
    little.
    """
    largest = _IN_SIZES[-1]
    for start in range(0, len(keys), largest):
        yield _padded_chunk(keys[start : start + largest], now)


def _padded_chunk(chunk: list[str], now: float) -> tuple[int, tuple[Any, ...]]:
    """One chunk (1 to 1,024 keys) of :func:`_padded`: its padded size and its arguments."""
    size = _IN_SIZE_FOR[len(chunk)]
    return size, (*chunk, *[chunk[-1]] * (size - len(chunk)), now)


# Rows are checked in Python (:func:`_only_scores`), not in the SELECT: a C-level pass over
# the values costs a fraction of evaluating the conditions row by row in SQLite.
_GET_SCORES = {
    n: f"SELECT key, value FROM Cache WHERE key IN ({','.join('?' * n)}) AND raw = 1 AND {_LIVE}"
    for n in _IN_SIZES
}
_GET_ENTRIES = {
    n: f"SELECT key, value, expire_time FROM Cache WHERE key IN ({','.join('?' * n)})"
    f" AND raw = 1 AND {_LIVE}"
    for n in _IN_SIZES
}


def _only_scores(found: dict[str, Any]) -> dict[str, float]:
    """``found`` without values that are not finite floats (what no store of ours writes:
    a pickle, a file reference, text or a number planted behind our back)."""
    values = found.values()
    if set(map(type, values)) <= _FLOAT and all(map(math.isfinite, values)):
        return found
    return {key: value for key, value in found.items() if _is_score(value)}


def _is_score(value: Any) -> bool:
    return type(value) is float and math.isfinite(value)


_FLOAT = {float}


def get_scores(con: sqlite3.Connection, keys: list[str], now: float) -> dict[str, float]:
    """Live, finite scores of ``keys``, in one ``SELECT ... IN`` per 1,024 keys."""
    if 0 < len(keys) <= _IN_SIZES[-1]:  # the hit path: one statement, no generator
        size, args = _padded_chunk(keys, now)
        return _only_scores(dict(con.execute(_GET_SCORES[size], args).fetchall()))
    found: dict[str, Any] = {}
    for size, args in _padded(keys, now):
        found.update(con.execute(_GET_SCORES[size], args).fetchall())
    return _only_scores(found)


def get_entries(
    con: sqlite3.Connection, keys: list[str], now: float
) -> dict[str, tuple[float, float | None]]:
    """:func:`get_scores` with each score's expiry time (None: never), for the memory tier."""
    found: dict[str, tuple[float, float | None]] = {}
    for size, args in _padded(keys, now):
        for key, value, expires in con.execute(_GET_ENTRIES[size], args).fetchall():
            if _is_score(value):
                found[key] = (value, expires)
    return found


def _keys_where(
    con: sqlite3.Connection, table: str, keys: list[str], condition: str, args: tuple[Any, ...]
) -> set[str]:
    """Which of ``keys`` have a row in ``table`` meeting ``condition`` (bound to ``args``)."""
    found: set[str] = set()
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT key FROM {table} WHERE key IN ({marks}) AND {condition}"
        found.update(row[0] for row in con.execute(sql, (*chunk, *args)))
    return found


def live_keys(con: sqlite3.Connection, keys: list[str], now: float) -> set[str]:
    """Which of ``keys`` are stored and live."""
    return _keys_where(con, "Cache", keys, f"raw = 1 AND {_LIVE}", (now,))


def upsert_scores(
    con: sqlite3.Connection, scores: Mapping[str, float], now: float, expire: float | None
) -> None:
    """Store scores as rows ``SafeDisk`` would write, in one statement (inside a transaction).

    One UPSERT for the batch instead of ``Cache.set()`` per key (a SELECT, an INSERT or
    UPDATE, and a cull check of three more statements, per key). ``DO UPDATE`` (not
    ``REPLACE``) keeps diskcache's count/size triggers right.
    """
    upsert_expiring(con, [(key, value, expire) for key, value in scores.items()], now)


def upsert_expiring(
    con: sqlite3.Connection, rows: list[tuple[str, float, float | None]], now: float
) -> None:
    """Store ``(key, score, expire_time)`` rows, each with its own expiry, as
    :func:`upsert_scores` does (inside a transaction)."""
    con.executemany(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time,"
        " access_count, tag, size, mode, filename, value)"
        " VALUES (?, 1, ?, ?, ?, 0, NULL, 0, 1, NULL, ?)"
        " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
        " expire_time = excluded.expire_time, access_time = excluded.access_time,"
        " value = excluded.value, tag = NULL, size = 0, mode = 1, filename = NULL",
        [(key, now, expire, now, value) for key, value, expire in rows],
    )


def live_scores_after(
    con: sqlite3.Connection, after: str, now: float, model: str | None, limit: int
) -> list[tuple[str, float, float | None]]:
    """Up to ``limit`` live, safe scores (only ``model``'s, if given) with keys after
    ``after``, in key order: ``(key, score, expire_time)``. One index range per call, so an
    export walks any size of store in flat memory and without a long read transaction."""
    where, args = _of_model(model)
    rows = con.execute(
        f"SELECT key, value, expire_time FROM Cache WHERE key > ? AND {_SAFE_ROW} AND {_LIVE}"
        f"{where} AND {_CURRENT} ORDER BY key LIMIT ?",
        (after, now, *args, KEY_PREFIX, limit),
    ).fetchall()
    return [(key, value, expire) for key, value, expire in rows if math.isfinite(value)]


def tidy_expired(con: sqlite3.Connection, now: float, limit: int) -> None:
    """Delete at most ``limit`` expired rows (an index range scan, cheap on every write)."""
    con.execute(
        "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache WHERE "
        "expire_time IS NOT NULL AND expire_time <= ? LIMIT ?)",
        (now, limit),
    )


def delete_expired(con: sqlite3.Connection, now: float, model: str | None = None) -> int:
    """Delete up to :data:`DELETE_CHUNK` expired rows (only ``model``'s, if given); return
    how many (fewer than the chunk: none are left)."""
    where, args = _of_model(model)
    return int(
        con.execute(
            "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache WHERE "
            f"expire_time IS NOT NULL AND expire_time <= ?{where} LIMIT ?)",
            (now, *args, DELETE_CHUNK),
        ).rowcount
    )


def delete_scores(con: sqlite3.Connection, model: str | None = None) -> int:
    """Delete up to :data:`DELETE_CHUNK` rows, or only ``model``'s scores; return how many
    (fewer than the chunk: none are left)."""
    where, args = (
        ("", ()) if model is None else (f" WHERE {_MODEL} = ? AND {_CURRENT}", (model, KEY_PREFIX))
    )
    return int(
        con.execute(
            f"DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache{where} LIMIT ?)",
            (*args, DELETE_CHUNK),
        ).rowcount
    )


def count_scores(
    con: sqlite3.Connection, now: float, *, model: str | None = None, expired: bool = False
) -> int:
    """Count live scores (or expired ones), optionally only ``model``'s."""
    where, args = _of_model(model)
    live = "NOT " + _LIVE if expired else _LIVE
    sql = f"SELECT count(*) FROM Cache WHERE raw = 1 AND {live}{where}"
    return int(con.execute(sql, (now, *args)).fetchone()[0])


# -- checking --------------------------------------------------------------------------------


def integrity_check(con: sqlite3.Connection) -> str:
    """SQLite's verdict on the file: ``"ok"``, or what is wrong."""
    return "; ".join(row[0] for row in con.execute("PRAGMA integrity_check").fetchall())


def count_rows(con: sqlite3.Connection) -> int:
    """Every row of the ``Cache`` table, ours or not, live or not."""
    return int(con.execute("SELECT count(*) FROM Cache").fetchone()[0])


def count_unsafe(con: sqlite3.Connection) -> int:
    """Rows that are not an inline float (never read)."""
    return int(con.execute(f"SELECT count(*) FROM Cache WHERE NOT ({_SAFE_ROW})").fetchone()[0])


def delete_unsafe(con: sqlite3.Connection) -> int:
    """Delete rows that are not an inline float; return how many."""
    return int(con.execute(f"DELETE FROM Cache WHERE NOT ({_SAFE_ROW})").rowcount)


def reset_count_settings(con: sqlite3.Connection) -> None:
    """Set diskcache's stored row count from the table, and its size of files to 0 (we keep
    none), after rows were deleted behind its back."""
    con.execute("UPDATE Settings SET value = ? WHERE key = 'count'", (count_rows(con),))
    con.execute("UPDATE Settings SET value = 0 WHERE key = 'size'")


# -- settings --------------------------------------------------------------------------------


def _flag(value: Any) -> bool:
    return type(value) is int and value in (0, 1)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _small(high: int) -> Any:
    return lambda value: type(value) is int and 0 <= value <= high


#: Every ``Settings`` row diskcache (as ScoreCache opens it) writes, and what its value may
#: be. diskcache applies each row with ``setattr`` on opening (``disk_*`` rows go to the
#: Disk's constructor, ``sqlite_*`` rows into ``PRAGMA name = value``), so a row outside
#: this table could move the store, break it, or inject SQL: such a store is refused.
_SETTINGS: Mapping[str, Any] = {
    "statistics": _flag,
    "tag_index": _flag,
    "eviction_policy": lambda value: (
        value in ("least-recently-stored", "least-recently-used", "least-frequently-used", "none")
    ),
    "size_limit": _count,
    "cull_limit": _count,
    "sqlite_auto_vacuum": _small(2),
    "sqlite_cache_size": lambda value: type(value) is int,
    "sqlite_journal_mode": lambda value: value == "wal",
    "sqlite_mmap_size": _count,
    "sqlite_synchronous": _small(3),
    "disk_min_file_size": _count,
    "disk_pickle_protocol": _small(5),
    # diskcache's metadata rows; "count" and "size" are kept by its triggers.
    "count": lambda value: type(value) is int,
    "size": lambda value: type(value) is int,
    "hits": lambda value: type(value) is int,
    "misses": lambda value: type(value) is int,
}


def unsafe_settings(con: sqlite3.Connection) -> dict[int, str]:
    """``Settings`` rows ScoreCache never writes, by rowid, each with why (none if no table).

    Run it on a connection of our own, before diskcache opens the file and applies them.

    Raises:
        sqlite3.DatabaseError: the file is damaged (or locked).
    """
    try:
        rows = con.execute("SELECT rowid, key, value FROM Settings").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    unsafe: dict[int, str] = {}
    for rowid, key, value in rows:
        check = _SETTINGS.get(key) if isinstance(key, str) else None
        if check is None:
            unsafe[rowid] = f"unknown setting {key!r}"
        elif not check(value):
            unsafe[rowid] = f"setting {key!r} has an unexpected value ({type(value).__name__})"
    return unsafe


def delete_settings(con: sqlite3.Connection, rowids: list[int]) -> int:
    """Delete ``Settings`` rows by rowid (diskcache writes its defaults back on opening)."""
    return sum(
        con.execute("DELETE FROM Settings WHERE rowid = ?", (rowid,)).rowcount for rowid in rowids
    )


# -- counters --------------------------------------------------------------------------------


def read_counters(con: sqlite3.Connection) -> dict[str, Counter[str]]:
    """Stored counters by model (none if the table does not exist yet)."""
    try:
        rows = con.execute(f"SELECT model, name, value FROM {COUNTERS_TABLE}").fetchall()
    except sqlite3.OperationalError:
        return {}
    out: dict[str, Counter[str]] = {}
    for model, name, value in rows:
        out.setdefault(model, Counter())[name] += int(value)
    return out


def add_counters(con: sqlite3.Connection, counters: Mapping[str, Mapping[str, int]]) -> None:
    """Add counters (inside the caller's transaction)."""
    rows = [
        (model, name, value)
        for model, deltas in counters.items()
        for name, value in deltas.items()
        if value
    ]
    if rows:
        con.executemany(
            f"INSERT INTO {COUNTERS_TABLE} (model, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT(model, name) DO UPDATE SET value = value + excluded.value",
            rows,
        )


def add_counters_to(db: Path, counters: Mapping[str, Mapping[str, int]]) -> None:
    """Add counters to ``db`` through a connection of its own, waiting at most a second for
    another process's lock (the flush of a store object that was never closed)."""
    con = sqlite3.connect(db, timeout=1.0)
    try:
        with con:
            add_counters(con, counters)
    finally:
        con.close()


# -- stats -----------------------------------------------------------------------------------


def entries(
    con: sqlite3.Connection, now: float
) -> tuple[dict[str, int], int, float | None, float | None]:
    """Live entries per model, expired entries, oldest and newest live store time.

    No full scan on the usual path: each model's keys form one range of the ``(key, raw)``
    index (:func:`~rerank_cache.keys.key_range`). Hop from model to model (one index seek
    each), count each range on the covering index, and subtract the expired rows (found
    through the ``expire_time`` index). A model name containing ``":"`` would make ranges
    nest, so then one grouped scan is used instead.

    Raises:
        sqlite3.OperationalError: no ``Cache`` table yet.
    """
    totals: dict[str, int] = {}
    low, high = key_range()
    while row := con.execute(
        "SELECT key FROM Cache WHERE key >= ? AND key < ? ORDER BY key LIMIT 1", (low, high)
    ).fetchone():
        key = row[0]
        model = model_of(key)
        if model is None:
            low = key + "\x00"  # not a current-format key: step over it
            continue
        first, past = key_range(model)
        count, nested = con.execute(
            "SELECT count(*), total(length(key) != ?) FROM Cache "
            "WHERE key >= ? AND key < ? AND raw = 1",
            (len(first) + HASH_DIGITS, first, past),
        ).fetchone()
        if ":" in model or nested:  # another model's keys inside this range
            totals = dict(
                con.execute(
                    f"SELECT {_MODEL}, count(*) FROM Cache WHERE raw = 1 AND {_CURRENT} GROUP BY 1",
                    (KEY_PREFIX,),
                ).fetchall()
            )
            break
        totals[model] = count
        low = past
    dead = dict(
        con.execute(
            f"SELECT {_MODEL}, count(*) FROM Cache WHERE expire_time IS NOT NULL "
            f"AND expire_time <= ? AND raw = 1 AND {_CURRENT} GROUP BY 1",
            (now, KEY_PREFIX),
        ).fetchall()
    )
    live_entries = {model: total - dead.get(model, 0) for model, total in totals.items()}
    # "+expire_time" keeps SQLite on the store_time index: the first live row in store_time
    # order is the oldest, the last the newest (no scan, no sort).
    live = "(+expire_time IS NULL OR +expire_time > ?)"
    oldest = con.execute(
        f"SELECT store_time FROM Cache WHERE {live} ORDER BY store_time LIMIT 1", (now,)
    ).fetchone()
    newest = con.execute(
        f"SELECT store_time FROM Cache WHERE {live} ORDER BY store_time DESC LIMIT 1", (now,)
    ).fetchone()
    return (
        live_entries,
        sum(dead.values()),
        oldest[0] if oldest else None,
        newest[0] if newest else None,
    )


# -- claims on in-flight pairs (stores/claims.py) --------------------------------------------

#: Keys one process is fetching from DashScope, so other processes wait for its scores
#: instead of sending the same pairs. Tiny and short-lived: a row lives from a claim to the
#: write of its score (or to ``until``, when the claimer died).
CLAIMS_TABLE = "RerankCacheClaims"
CREATE_CLAIMS_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} ("
    " key TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID"
)


def claim_keys(
    con: sqlite3.Connection, keys: list[str], owner: str, now: float, until: float
) -> set[str]:
    """Claim ``keys`` for ``owner`` until ``until`` in one write transaction; return the keys
    ``owner`` holds now (claimed here, or already its own). Claims past their ``until`` are
    deleted first, so a dead claimer's keys are taken over."""
    con.execute("BEGIN IMMEDIATE")
    try:
        # Only the keys asked for: their expired claims are the ones in the way.
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            con.execute(
                f"DELETE FROM {CLAIMS_TABLE} WHERE key IN ({marks}) AND until <= ?", (*chunk, now)
            )
        con.executemany(
            f"INSERT OR IGNORE INTO {CLAIMS_TABLE} (key, owner, until) VALUES (?, ?, ?)",
            [(key, owner, until) for key in keys],
        )
        held = _keys_where(con, CLAIMS_TABLE, keys, "owner = ?", (owner,))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return held


def claimed_keys(con: sqlite3.Connection, keys: list[str], now: float) -> set[str]:
    """Which of ``keys`` someone holds a live claim on (a read, no lock)."""
    return _keys_where(con, CLAIMS_TABLE, keys, "until > ?", (now,))


def release_keys(con: sqlite3.Connection, keys: list[str], owner: str, now: float) -> None:
    """Drop ``owner``'s claims on ``keys`` and any claim already expired, in one transaction
    (expired rows of keys nobody asks for again are swept here)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            con.execute(
                f"DELETE FROM {CLAIMS_TABLE} WHERE key IN ({marks}) AND owner = ?",
                (*chunk, owner),
            )
        con.execute(f"DELETE FROM {CLAIMS_TABLE} WHERE until <= ?", (now,))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
