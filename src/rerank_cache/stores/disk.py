"""``ScoreCache``: the persistent, multi-process score store on diskcache.

One row per (model, instruct, query, document) score, keyed by :mod:`rerank_cache.keys`, the
value an inline float, with an expiry time. Reads are one batched ``SELECT`` on the
``(key, raw)`` index and never write; writes happen once per completed DashScope request, in
one transaction together with the usage counters. Counters of hits and misses are kept in
memory and flushed with the next write, by a background thread every ``stats_flush_interval`` s, and
on :meth:`ScoreCache.close`, so the all-hits path stays write-free. The SQL itself is in
:mod:`rerank_cache.stores.sqlite`; the counters, flush and fail-open logging in
:class:`~rerank_cache.stores.base.StoreBase`.

Storage trouble fails open: a read that fails is a miss, a write that fails is skipped; both
are logged and counted, and the rerank goes on through the API.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import diskcache

from ..errors import CacheDirectoryError, CacheError, CorruptCacheError
from . import sqlite
from .base import TTL_UNSET, AdminStore, CounterWriter, StoreBase
from .memory import DEFAULT_MEMORY_ENTRIES
from .open import default_cache_dir, open_store, secure_directory
from .safedisk import SafeDisk
from .stats import CacheStats, CheckReport, build_stats

__all__ = ["DEFAULT_SIZE_LIMIT", "ScoreCache", "read_stats", "repair_settings"]

logger = logging.getLogger("rerank_cache")

#: Default size limit of the store: 1 GiB, about 4-6 million scores.
DEFAULT_SIZE_LIMIT = 2**30
#: Opening waits at least this long for other processes' writes (see _wait_for_writers).
_MIN_OPEN_WAIT = 2.0
# Changed by every clear, so other processes' memory tiers forget (see StoreBase).
_GENERATION_FILE = "generation"
#: What counts as storage trouble on the request path (fails open).
_FAILURES = (sqlite3.Error, OSError, diskcache.Timeout)


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
    for name in ("cache.db", "cache.db-wal"):
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
    db = path / "cache.db"
    if not db.exists():
        return _collect_stats(sqlite3.connect(":memory:"), str(path), time.time())
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise CacheDirectoryError(f"cannot open {db} read-only: {exc}") from None
    try:
        return _collect_stats(con, str(path), time.time())
    except sqlite3.DatabaseError as exc:
        raise CorruptCacheError(_corrupt_message(db, exc)) from None
    finally:
        con.close()


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """True for a damaged file, not for a lock, a full disk or a permission problem."""
    return type(exc) is sqlite3.DatabaseError  # OperationalError & co. are subclasses


def _corrupt_message(db: Path, exc: BaseException) -> str:
    return (
        f"the cache file {db} is damaged ({exc}). Scores can always be re-fetched: run "
        f"`rerank-cache --cache-dir {db.parent} check --fix`, or move the directory away."
    )


def _settings_message(db: Path, problems: Mapping[int, str]) -> str:
    listed = "; ".join(sorted(problems.values())[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return (
        f"refusing the cache in {db.parent}: its settings table holds rows this store never "
        f"writes ({listed}{more}); something else wrote them. Run "
        f"`rerank-cache --cache-dir {db.parent} check --fix` to remove them."
    )


def _checked_settings(db: Path, timeout: float) -> None:
    """Refuse a ``cache.db`` whose ``Settings`` rows diskcache would apply unchecked.

    Read on a read-only connection of our own, before diskcache opens the file.

    Raises:
        CacheError: an unknown row, or a value of the wrong type.
        sqlite3.DatabaseError: the file is damaged (the caller decides what then).
    """
    if not db.exists():
        return
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        problems = sqlite.unsafe_settings(con)
    finally:
        con.close()
    if problems:
        raise CacheError(_settings_message(db, problems))


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
    db = path / "cache.db"
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=5.0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        problems = sqlite.unsafe_settings(con)
        sqlite.delete_settings(con, list(problems))
        con.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if _is_corruption(exc):
            return []  # a damaged file: opening it moves it aside (or says so)
        raise _maintenance_error(db, "repairing settings", exc) from None
    finally:
        con.close()
    return [f"removed {why}" for why in problems.values()]


def _maintenance_error(db: Path, what: str, exc: BaseException) -> CacheError:
    """A maintenance failure as an error of ours, saying what to do."""
    if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
        return CorruptCacheError(_corrupt_message(db, exc))
    if isinstance(exc, diskcache.Timeout) or "locked" in str(exc) or "busy" in str(exc):
        return CacheError(
            f"{what} gave up: the cache in {db.parent} stayed locked by another process; "
            "try again when it is less busy"
        )
    return CacheError(
        f"{what} failed in {db.parent} ({type(exc).__name__}: {exc}); check the disk and "
        f"permissions, or run `rerank-cache --cache-dir {db.parent} check`"
    )


class ScoreCache(StoreBase):
    """A persistent store of rerank scores, safe across threads and processes.

    Args:
        directory: where the store lives; defaults to :func:`default_cache_dir`. Created
            0700; a symlink, a directory owned by another user, or one writable by others
            is refused.
        ttl: how long a score stays valid: seconds, a ``timedelta``, or None for never.
            Default :data:`~rerank_cache.stores.base.DEFAULT_TTL` (30 days).
        size_limit: bytes on disk before the oldest scores are culled (default 1 GiB).
        timeout: seconds a write waits for another process's lock before it is skipped
            (opening waits at least 2 s, then raises :class:`CacheError`).
        stats_flush_interval: seconds between flushes of the hit/miss counters (they are
            also flushed with every write and on close).
        recover: when the cache file is damaged, move it aside and start empty (True) or
            raise :class:`CorruptCacheError` (False).
        stale_ttl: how long past its ttl a score is kept for ``on_error="stale"`` (seconds,
            a ``timedelta``, or None: not kept). Kept scores are never read by
            :meth:`get_many` nor counted as entries; :meth:`expire` deletes them after it.
        memory_entries: scores this process keeps in memory in front of the file (recently
            read or written, each until it expires); 0 turns the memory tier off. Default
            :data:`~rerank_cache.stores.memory.DEFAULT_MEMORY_ENTRIES` (50,000: about 12 MB). A
            ``clear`` in any process is seen by the others on their next call (a ``stat``
            of the ``generation`` file in the directory).

    Example:
        >>> import tempfile
        >>> with ScoreCache(tempfile.mkdtemp() + "/scores", ttl=3600) as cache:
        ...     cache.stats().entries
        0
    """

    _failures = _FAILURES
    _write_failures = (TypeError,)  # SafeDisk refused a value
    # A flush from the request path gives up at once when another process holds the write
    # lock: that is expected under load, and the counters go with the next write.
    _warn_unwaited_flush = False

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        ttl: float | timedelta | None = TTL_UNSET,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        timeout: float = 5.0,
        stats_flush_interval: float = 1.0,
        recover: bool = True,
        stale_ttl: float | timedelta | None = None,
        memory_entries: int = DEFAULT_MEMORY_ENTRIES,
    ) -> None:
        super().__init__(
            ttl=ttl,
            stats_flush_interval=stats_flush_interval,
            stale_ttl=stale_ttl,
            memory_entries=memory_entries,
        )
        if size_limit < 1:
            raise ValueError("size_limit must be positive")
        self._directory = secure_directory(
            Path(directory) if directory is not None else default_cache_dir()
        )
        self._generation_file = str(self._directory / _GENERATION_FILE)
        self._size_limit = size_limit
        self._timeout = timeout
        self._open_timeout = max(timeout, _MIN_OPEN_WAIT)
        self._cache = self._open(recover)
        self._opened()

    @classmethod
    def from_url(cls, url: str | os.PathLike[str], **kwargs: Any) -> AdminStore:
        """Open the score store a URL names: Redis for a fleet, or a directory on disk.

        ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs open a
        :class:`~rerank_cache.stores.redis.RedisScoreCache` (``?namespace=NAME`` picks the
        key prefix); a ``file://`` URL or a plain path opens a :class:`ScoreCache` there.
        Keyword arguments go to the chosen class (``ttl`` works for both).

        Raises:
            ConfigurationError: the URL has another scheme.
            ImportError: a Redis URL, but redis-py is not installed
                (``pip install 'rerank-cache[redis]'``).

        Example:
            >>> import tempfile
            >>> store = ScoreCache.from_url(f"file://{tempfile.mkdtemp()}/scores", ttl=60)
            >>> type(store).__name__, store.stats().entries
            ('ScoreCache', 0)
            >>> store.close()
        """
        return open_store(url, cls, **kwargs)

    def _open(self, recover: bool) -> diskcache.Cache:
        try:
            return self._open_once()
        except diskcache.Timeout:
            raise CacheError(
                f"the cache in {self._directory} stayed locked by another process for "
                f"{self._open_timeout:g} s; try again, or raise ScoreCache(timeout=...)"
            ) from None
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise CacheError(f"cannot open the cache in {self._directory}: {exc}") from None
            if not recover:
                raise CorruptCacheError(
                    _corrupt_message(self._directory / "cache.db", exc)
                ) from None
            moved = self._quarantine()
            logger.error(
                "rerank-cache: the cache file in %s was damaged (%s); moved it to %s and "
                "started an empty cache. Scores will be re-fetched.",
                self._directory,
                exc,
                moved,
            )
            return self._open_once()

    def _wait_for_writers(self) -> None:
        """Wait at most ``timeout`` for another process's write to end.

        diskcache's own set-up retries a locked database for a fixed 60 s; taking (and at
        once releasing) the write lock first bounds opening by ``timeout`` instead (at least
        a couple of seconds: other writers' transactions are short, and opening under
        contention should succeed, not fail open).
        """
        db = self._directory / "cache.db"
        if not db.exists():
            return
        con = sqlite3.connect(db, timeout=self._open_timeout, isolation_level=None)
        try:
            sqlite.lock_and_release(con)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise diskcache.Timeout from None
            raise
        finally:
            con.close()

    def _open_once(self) -> diskcache.Cache:
        self._wait_for_writers()
        _checked_settings(self._directory / "cache.db", self._open_timeout)
        cache = diskcache.Cache(
            str(self._directory),
            timeout=self._timeout,
            disk=SafeDisk,
            size_limit=self._size_limit,
            eviction_policy="least-recently-stored",
            cull_limit=0,  # see _enforce_size_limit
            statistics=0,
            tag_index=0,
        )
        try:
            if not sqlite.counters_table_exists(cache._con):
                # Like diskcache's own set-up: wait out other writers (a read needs no lock).
                cache._sql_retry(sqlite.CREATE_COUNTERS_TABLE)
        except BaseException:
            cache.close()
            raise
        return cache

    def _quarantine(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{time.time_ns() % 10**9}"
        target = self._directory / f"cache.db.corrupt-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            source = self._directory / f"cache.db{suffix}"
            if source.exists():
                os.replace(source, Path(f"{target}{suffix}"))
        return target

    @property
    def _con(self) -> sqlite3.Connection:
        """diskcache's connection for this thread: our SQL runs in its transactions."""
        con: sqlite3.Connection = self._cache._con
        return con

    # -- properties ----------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The cache directory."""
        return self._directory

    def __repr__(self) -> str:
        return f"ScoreCache({str(self._directory)!r}, ttl={self._ttl!r})"

    # -- StoreBase hooks -----------------------------------------------------------------

    @property
    def _where(self) -> str:
        return str(self._directory)

    def _failed(self, exc: BaseException) -> str:
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            return (
                f"; the file looks damaged: run `rerank-cache --cache-dir {self._directory} "
                "check --fix`"
            )
        return ""

    def _write_counters_now(self, pending: Mapping[str, Counter[str]], *, wait: bool) -> None:
        con = self._con
        if not wait:
            sqlite.set_busy_timeout(con, 0)  # the request path never waits for counters
        try:
            with self._cache.transact():
                sqlite.add_counters(con, pending)
        finally:
            if not wait:
                sqlite.set_busy_timeout(con, self._timeout)

    def _release(self) -> None:
        self._cache.close()

    def _counter_writer(self) -> CounterWriter:
        return functools.partial(sqlite.add_counters_to, self._directory / "cache.db")

    def _background_done(self) -> None:
        self._cache.close()  # diskcache closes the calling thread's connection only

    # -- reads and writes (StoreBase hooks): one SELECT, one transaction --------------------

    def _read_scores(self, keys: list[str]) -> dict[str, float]:
        return sqlite.get_scores(self._con, keys, time.time())

    def _read_stale_scores(self, keys: list[str]) -> dict[str, float]:
        return sqlite.get_scores(self._con, keys, self._deletable_before(time.time()))

    def _deletable_before(self, now: float) -> float:
        """Rows that expired before this are gone for good (past the stale window too)."""
        return now - (self._stale_ttl or 0.0)

    def _read_entries(
        self, keys: list[str]
    ) -> tuple[Hashable, dict[str, tuple[float, float | None]]]:
        generation = self._generation()
        if not keys:
            return generation, {}
        return generation, sqlite.get_entries(self._con, keys, time.time())

    def _generation(self) -> Hashable:
        """The generation file's identity, size and change time: any clear changes it."""
        try:
            st = os.stat(self._generation_file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

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

    def _write_scores(
        self, scores: dict[str, float], model: str, counters: dict[str, Counter[str]]
    ) -> bool:
        with self._cache.transact():
            con = self._con
            duplicates = len(sqlite.live_keys(con, list(scores), time.time())) if scores else 0
            now = time.time()
            sqlite.upsert_scores(con, scores, now, None if self._ttl is None else now + self._ttl)
            counters[model]["duplicate_sends"] += duplicates
            # Tidy as we go: drop as many expired rows as we wrote.
            sqlite.tidy_expired(con, self._deletable_before(time.time()), len(scores))
            sqlite.add_counters(con, counters)
        self._enforce_size_limit()
        return True

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
        except _FAILURES as exc:
            self._store_error("eviction", exc)

    # -- maintenance ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _maintenance(self, what: str) -> Iterator[None]:
        """Turn a lock held too long or a damaged file into an error saying what to do."""
        try:
            yield
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise _maintenance_error(self._directory / "cache.db", what, exc) from None

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
            if not _is_corruption(exc):
                raise _maintenance_error(self._directory / "cache.db", "checking", exc) from None
            integrity, rows, unsafe, settings = str(exc), 0, 0, {}
        if integrity != "ok":
            message = _corrupt_message(self._directory / "cache.db", RuntimeError(integrity))
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
        moved = self._quarantine()
        logger.error(
            "rerank-cache: moved the cache file in %s to %s and started an empty cache",
            self._directory,
            moved,
        )
        self._cache = self._open_once()
        self._bump_generation()
        return moved
