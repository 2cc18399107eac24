"""``ScoreCache``: the persistent, multi-process score store on diskcache.

One row per (model, instruct, query, document) score, keyed by :mod:`rerank_cache.keys`, the
value an inline float, with an expiry time. Reads are one batched ``SELECT`` on the
``(key, raw)`` index and never write; writes happen once per completed DashScope request, in
one transaction together with the usage counters. Counters of hits and misses are kept in
memory and flushed with the next write, by a background thread every ``stats_flush_interval`` s, and
on :meth:`ScoreCache.close`, so the all-hits path stays write-free. The SQL itself is in
:mod:`rerank_cache.stores.sqlite`; the counters, flush and fail-open logging in
:class:`~rerank_cache.stores.base.StoreBase`; maintenance (stats, clear, expire, check,
export and import) in :class:`~rerank_cache.stores.disk_admin.DiskAdmin`.

Storage trouble fails open: a read that fails is a miss, a write that fails is skipped; both
are logged and counted, and the rerank goes on through the API.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Hashable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import diskcache

from ..errors import CacheError, CorruptCacheError
from . import sqlite
from .disk_admin import (
    FAILURES,
    DiskAdmin,
    corrupt_message,
    is_corruption,
    is_lock_wait,
    quarantine,
)
from .flusher import CounterWriter
from .memory import DEFAULT_MEMORY_ENTRIES
from .open import default_cache_dir, open_store, secure_directory
from .protocols import TTL_UNSET, AdminStore
from .safedisk import SafeDisk

__all__ = ["DEFAULT_SIZE_LIMIT", "ScoreCache"]

logger = logging.getLogger("rerank_cache")

#: Default size limit of the store: 1 GiB, about 4-6 million scores.
DEFAULT_SIZE_LIMIT = 2**30
#: Opening waits at least this long for other processes' writes (see _wait_for_writers).
_MIN_OPEN_WAIT = 2.0
# Changed by every clear, so other processes' memory tiers forget (see StoreBase).
_GENERATION_FILE = "generation"


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


class ScoreCache(DiskAdmin):
    """A persistent store of rerank scores, safe across threads and processes.

    Args:
        directory: where the store lives; defaults to :func:`default_cache_dir`. Created
            0700; a symlink, a directory owned by another user, or one writable by others
            is refused.
        ttl: how long a score stays valid: seconds, a ``timedelta``, or None for never.
            Default :data:`~rerank_cache.stores.protocols.DEFAULT_TTL` (30 days).
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

    _failures = FAILURES
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
            if not is_corruption(exc):
                raise CacheError(f"cannot open the cache in {self._directory}: {exc}") from None
            if not recover:
                raise CorruptCacheError(corrupt_message(self._db, exc)) from None
            moved = quarantine(self._directory)
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
        db = self._db
        if not db.exists():
            return
        con = sqlite3.connect(db, timeout=self._open_timeout, isolation_level=None)
        try:
            sqlite.lock_and_release(con)
        except sqlite3.OperationalError as exc:
            if is_lock_wait(exc):
                raise diskcache.Timeout from None
            raise
        finally:
            con.close()

    def _open_once(self) -> diskcache.Cache:
        self._wait_for_writers()
        _checked_settings(self._db, self._open_timeout)
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
        if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
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
        return functools.partial(sqlite.add_counters_to, self._db)

    def _background_done(self) -> None:
        self._cache.close()  # diskcache closes the calling thread's connection only

    # -- reads and writes (StoreBase hooks): one SELECT, one transaction --------------------

    def _read_scores(self, keys: list[str]) -> dict[str, float]:
        return sqlite.get_scores(self._con, keys, time.time())

    def _read_stale_scores(self, keys: list[str]) -> dict[str, float]:
        return sqlite.get_scores(self._con, keys, self._deletable_before(time.time()))

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
