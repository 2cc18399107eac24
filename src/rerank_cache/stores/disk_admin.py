"""The disk store's maintenance: stats, clear, expire, count, check, export and import.

:class:`DiskAdmin` is the part of :class:`~rerank_cache.stores.disk.ScoreCache` that the
``rerank-cache`` command uses (the :class:`~rerank_cache.stores.protocols.AdminStore`
methods beyond the request path), with the few steps it shares with the request path (the
connection, the stale window, the generation bump, eviction). Here too: reading a cache's
stats without opening it (:func:`read_stats`), repairing the settings rows that
diskcache would apply unchecked, and turning SQLite's failures into errors that say what
to do. The SQL itself is in :mod:`rerank_cache.stores.sqlite`; opening and the request path
are in :mod:`rerank_cache.stores.disk`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import diskcache

from ..errors import CacheDirectoryError, CacheError, CorruptCacheError
from . import sqlite
from .base import StoreBase
from .open import default_cache_dir, secure_directory
from .stats import CacheStats, CheckReport, build_stats

__all__ = [
    "FAILURES",
    "DiskAdmin",
    "corrupt_message",
    "is_corruption",
    "is_lock_wait",
    "quarantine",
    "read_stats",
    "repair_settings",
]

logger = logging.getLogger("rerank_cache")

#: What counts as storage trouble on the request path (fails open).
FAILURES = (sqlite3.Error, OSError, diskcache.Timeout)


def _collect_stats(
    con: sqlite3.Connection,
    directory: str,
    now: float,
    pending: Mapping[str, Counter[str]] | None = None,
) -> CacheStats:
    counters = sqlite.read_counters(con)
    for model, deltas in (pending or {}).items():
        counters.setdefault(model, Counter()).update(deltas)
    try:
        entries_by_model, expired, oldest, newest = sqlite.entries(con, now)
    except sqlite3.OperationalError:  # no Cache table yet: an empty store
        entries_by_model, expired, oldest, newest = {}, 0, None, None
    size = 0
    for name in (sqlite.DB_NAME, sqlite.DB_NAME + "-wal"):
        with contextlib.suppress(OSError):
            size += os.path.getsize(os.path.join(directory, name))
    return build_stats(
        directory,
        counters,
        entries_by_model,
        expired=expired,
        size=size,
        oldest=_utc(oldest),
        newest=_utc(newest),
    )


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


def read_stats(directory: str | os.PathLike[str] | None = None) -> CacheStats:
    """Read a cache's stats without changing anything, even while others write.

    Opens ``cache.db`` read-only (no diskcache settings are written, no lock is taken that
    blocks writers). A missing directory, or one without a cache, reads as empty.

    Raises:
        CacheDirectoryError: the directory is unsafe or unreadable.
        CorruptCacheError: the cache file is damaged.
    """
    path = Path(os.path.abspath(Path(directory) if directory else default_cache_dir()))
    if not os.path.lexists(path):
        return _collect_stats(sqlite3.connect(":memory:"), str(path), time.time())
    path = secure_directory(path, create=False)
    db = path / sqlite.DB_NAME
    if not db.exists():
        return _collect_stats(sqlite3.connect(":memory:"), str(path), time.time())
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise CacheDirectoryError(f"cannot open {db} read-only: {exc}") from None
    try:
        return _collect_stats(con, str(path), time.time())
    except sqlite3.DatabaseError as exc:
        raise CorruptCacheError(corrupt_message(db, exc)) from None
    finally:
        con.close()


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """True for a damaged file, not for a lock, a full disk or a permission problem."""
    return type(exc) is sqlite3.DatabaseError  # OperationalError & co. are subclasses


def is_lock_wait(exc: BaseException) -> bool:
    """True when SQLite gave up waiting for another connection's lock."""
    return "locked" in str(exc) or "busy" in str(exc)


def corrupt_message(db: Path, exc: BaseException) -> str:
    return (
        f"the cache file {db} is damaged ({exc}). Scores can always be re-fetched: run "
        f"`rerank-cache --cache-dir {db.parent} check --fix`, or move the directory away."
    )


def repair_settings(directory: str | os.PathLike[str]) -> list[str]:
    """Delete the ``Settings`` rows of a disk store that :class:`ScoreCache` would refuse.

    What ``rerank-cache check --fix`` runs before it opens the store; diskcache writes its
    defaults back for deleted rows when the store is next opened. Return what was removed.

    A damaged file is left alone (nothing removed): opening the store deals with it.

    Raises:
        CacheDirectoryError: the directory is unsafe.
        CacheError: the file is locked or cannot be written.
    """
    path = secure_directory(Path(directory), create=False)
    db = path / sqlite.DB_NAME
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=5.0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        problems = sqlite.unsafe_settings(con)
        sqlite.delete_settings(con, list(problems))
        con.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            return []  # a damaged file: opening it moves it aside (or says so)
        raise _maintenance_error(db, "repairing settings", exc) from None
    finally:
        con.close()
    return [f"removed {why}" for why in problems.values()]


def _maintenance_error(db: Path, what: str, exc: BaseException) -> CacheError:
    """A maintenance failure as an error of ours, saying what to do."""
    if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
        return CorruptCacheError(corrupt_message(db, exc))
    if isinstance(exc, diskcache.Timeout) or is_lock_wait(exc):
        return CacheError(
            f"{what} gave up: the cache in {db.parent} stayed locked by another process; "
            "try again when it is less busy"
        )
    return CacheError(
        f"{what} failed in {db.parent} ({type(exc).__name__}: {exc}); check the disk and "
        f"permissions, or run `rerank-cache --cache-dir {db.parent} check`"
    )


def quarantine(directory: Path) -> Path:
    """Move a damaged ``cache.db`` (and its WAL files) aside; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{time.time_ns() % 10**9}"
    target = directory / f"{sqlite.DB_NAME}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = directory / f"{sqlite.DB_NAME}{suffix}"
        if source.exists():
            os.replace(source, Path(f"{target}{suffix}"))
    return target


class DiskAdmin(StoreBase):
    """Maintenance of a disk store, and the steps it shares with the request path.

    :class:`~rerank_cache.stores.disk.ScoreCache` sets the attributes below when it opens,
    and implements :meth:`_open_once`.
    """

    _cache: diskcache.Cache
    _directory: Path
    _generation_file: str
    _size_limit: int

    def _open_once(self) -> diskcache.Cache:
        """Open the cache file once (no recovery); raise what diskcache or SQLite raise."""
        raise NotImplementedError

    @property
    def _db(self) -> Path:
        """The SQLite file diskcache keeps the scores in."""
        return self._directory / sqlite.DB_NAME

    @property
    def _con(self) -> sqlite3.Connection:
        """diskcache's connection for this thread: our SQL runs in its transactions."""
        con: sqlite3.Connection = self._cache._con
        return con

    def _deletable_before(self, now: float) -> float:
        """Rows that expired before this are gone for good (past the stale window too)."""
        return now - (self._stale_ttl or 0.0)

    def _bump_generation(self) -> None:
        """Tell every process's memory tier to forget (after scores were deleted).

        One byte appended: the size changes even where the clock is too coarse for mtime.
        """
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self._generation_file, flags, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        finally:
            self._cleared()

    def _enforce_size_limit(self) -> None:
        """Evict the oldest scores, after the write committed, until under ``size_limit``.

        diskcache's own culling runs inside ``set()``, where the file size cannot shrink
        until the transaction commits, so one batched write over the limit would evict up
        to ten rows per score written, its own included. It is switched off
        (``cull_limit=0``) and done here instead, in small committed steps.
        """
        try:
            if self._cache.volume() > self._size_limit:
                self._cache.cull()
        except FAILURES as exc:
            self._store_error("eviction", exc)

    # -- maintenance ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _maintenance(self, what: str) -> Iterator[None]:
        """Turn a lock held too long or a damaged file into an error saying what to do."""
        try:
            yield
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise _maintenance_error(self._db, what, exc) from None

    def stats(self) -> CacheStats:
        """Return entries, hits, misses, usage and a per-model breakdown (all processes).

        Raises:
            CacheError: the file is locked too long or cannot be read
                (:class:`CorruptCacheError` if damaged).
        """
        with self._maintenance("reading stats"):
            return _collect_stats(
                self._con, str(self._directory), time.time(), self._pending_here()
            )

    def clear(self, model: str | None = None) -> int:
        """Delete every score, or only ``model``'s; return how many were deleted.

        Counters are kept (they describe history, not contents). Rows go in chunks of
        :data:`~rerank_cache.stores.sqlite.DELETE_CHUNK`, each its own transaction, so other
        processes' writes wait for one chunk, not for the whole clear.

        Raises:
            CacheError: the file is locked too long or cannot be written
                (:class:`CorruptCacheError` if damaged).
        """
        try:
            return self._delete_in_chunks("clearing", lambda con: sqlite.delete_scores(con, model))
        finally:
            self._bump_generation()  # even a clear stopped part-way deleted scores

    def expire(self, now: float | None = None, *, model: str | None = None) -> int:
        """Delete expired scores (only ``model``'s, if given); return how many.

        With a ``stale_ttl``, only scores expired longer than it ago. In chunks, each its
        own transaction, like :meth:`clear`.

        Raises:
            CacheError: the file is locked too long or cannot be written
                (:class:`CorruptCacheError` if damaged).
        """
        when = self._deletable_before(time.time() if now is None else now)
        return self._delete_in_chunks(
            "expiring", lambda con: sqlite.delete_expired(con, when, model)
        )

    def _delete_in_chunks(self, what: str, delete: Callable[[sqlite3.Connection], int]) -> int:
        total = 0
        with self._maintenance(what):
            while True:
                started = time.monotonic()
                with self._cache.transact():
                    deleted = delete(self._con)
                total += deleted
                if deleted < sqlite.DELETE_CHUNK:
                    return total
                # A waiting writer polls the lock (SQLite's busy handler sleeps up to 100 ms
                # between tries); a pause as long as the chunk took lets it in.
                time.sleep(min(max(time.monotonic() - started, 0.005), 0.05))

    def iter_live(self, model: str | None = None) -> Iterator[tuple[str, float, float | None]]:
        """Every live score (only ``model``'s, if given) as ``(key, score, expires_at)``
        (epoch seconds; None: never), in key order, a chunk per query: flat memory."""
        after = ""
        while True:
            with self._maintenance("exporting"):
                rows = sqlite.live_scores_after(self._con, after, time.time(), model, 1000)
            yield from rows
            if len(rows) < 1000:
                return
            after = rows[-1][0]

    def put_expiring(self, rows: Iterable[tuple[str, float, float | None]]) -> int:
        """Store ``(key, score, expires_at)`` rows, each keeping its own expiry, in one
        transaction (an import); return how many. Raises :class:`CacheError`."""
        batch = [(key, float(value), expires) for key, value, expires in rows]
        with self._maintenance("importing"), self._cache.transact():
            sqlite.upsert_expiring(self._con, batch, time.time())
        self._enforce_size_limit()
        return len(batch)

    def count(self, *, model: str | None = None, expired: bool = False) -> int:
        """Count live scores (or expired ones), optionally only ``model``'s.

        Raises:
            CacheError: the file is locked too long or cannot be read
                (:class:`CorruptCacheError` if damaged).
        """
        with self._maintenance("counting"):
            return sqlite.count_scores(self._con, time.time(), model=model, expired=expired)

    def check(self, *, fix: bool = False) -> CheckReport:
        """Check the store's integrity; with ``fix``, repair it.

        Unsafe rows (not an inline float: tampered, or written by other software) are never
        read; ``fix`` deletes them. A damaged file (SQLite's integrity check fails, or it
        cannot even be read) is moved aside as ``cache.db.corrupt-*`` by ``fix`` and the
        store starts empty; scores are re-fetched as needed. No file a row names is read
        or deleted.

        Raises:
            CorruptCacheError: the file is damaged and ``fix`` is false.
        """
        con = self._con
        try:
            integrity = sqlite.integrity_check(con)
            rows = sqlite.count_rows(con)
            unsafe = sqlite.count_unsafe(con)
            settings = sqlite.unsafe_settings(con)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise _maintenance_error(self._db, "checking", exc) from None
            integrity, rows, unsafe, settings = str(exc), 0, 0, {}
        if integrity != "ok":
            message = corrupt_message(self._db, RuntimeError(integrity))
            if not fix:
                raise CorruptCacheError(message)
            moved = self.rebuild()
            return CheckReport(
                ok=True,
                integrity=integrity,
                rows=rows,
                unsafe_rows=unsafe,
                fixed=1,
                messages=[f"the damaged cache file was moved to {moved}; the cache is empty"],
            )
        messages: list[str] = []
        fixed = 0
        if unsafe:
            messages.append(f"{unsafe} unsafe row(s): not inline floats (never read)")
        messages.extend(f"{why} (refused on opening)" for why in settings.values())
        if fix:
            with self._maintenance("repairing"), self._cache.transact():
                if unsafe:
                    fixed += sqlite.delete_unsafe(con)
                fixed += sqlite.delete_settings(con, list(settings))
                sqlite.reset_count_settings(con)
        return CheckReport(
            ok=(unsafe == 0 and not settings) or fixed == unsafe + len(settings),
            integrity=integrity,
            rows=rows,
            unsafe_rows=unsafe,
            fixed=fixed,
            messages=messages,
        )

    def rebuild(self) -> Path:
        """Move the cache file aside (``cache.db.corrupt-*``) and start empty; return where.

        For a damaged file. Other processes using the store should be stopped first: they
        keep the old file open until they reopen the cache.
        """
        self._cache.close()
        moved = quarantine(self._directory)
        logger.error(
            "rerank-cache: moved the cache file in %s to %s and started an empty cache",
            self._directory,
            moved,
        )
        self._cache = self._open_once()
        self._bump_generation()
        return moved
