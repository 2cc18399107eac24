"""``ScoreCache``: the persistent, multi-process score store on diskcache.

One row per (model, instruct, query, document) score, keyed by :mod:`rerank_cache.keys`, the
value an inline float, with an expiry time. Reads are one batched ``SELECT`` on the
``(key, raw)`` index and never write; writes happen once per completed DashScope request, in
one transaction together with the usage counters. Counters of hits and misses are kept in
memory and flushed with the next write, at most every ``stats_flush_interval`` seconds, and
on :meth:`ScoreCache.close`, so the all-hits path stays write-free.

Storage trouble fails open: a read that fails is a miss, a write that fails is skipped; both
are logged and counted, and the rerank goes on through the API.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sqlite3
import stat
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

import diskcache
from pydantic import BaseModel, ConfigDict

from .counters import PendingCounters
from .errors import CacheDirectoryError, CacheError, ConfigurationError, CorruptCacheError
from .keys import KEY_VERSION
from .safedisk import SafeDisk
from .singleflight import SingleFlight

if TYPE_CHECKING:
    from .protocols import ScoreStore

__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "DEFAULT_TTL",
    "CacheStats",
    "CheckReport",
    "ModelStats",
    "ScoreCache",
    "default_cache_dir",
    "read_stats",
]

logger = logging.getLogger("rerank_cache")

#: Default time to live of a cached score: 30 days. Scores of a model version do not
#: change, but DashScope can update a model behind the same name; a month bounds the drift.
DEFAULT_TTL = timedelta(days=30)
#: Default size limit of the store: 1 GiB, about 4-6 million scores.
DEFAULT_SIZE_LIMIT = 2**30
#: Version of the ``stats()`` / ``--json`` schema.
STATS_SCHEMA_VERSION = 1

_COUNTERS_TABLE = "RerankCacheCounters"
_COUNTER_NAMES = (
    "hits",
    "misses",
    "api_requests",
    "documents_sent",
    "tokens_billed",
    "duplicate_sends",
    "store_errors",
    "fallbacks",
)
_KEY_HEAD = f"{KEY_VERSION}:"
_LIVE = "(expire_time IS NULL OR expire_time > ?)"
_SAFE_ROW = "raw = 1 AND mode = 1 AND filename IS NULL AND typeof(value) = 'real'"
_CHUNK = 500

_TTL_UNSET: Any = object()
#: Opening waits at least this long for other processes' writes (see _wait_for_writers).
_MIN_OPEN_WAIT = 2.0


def finite_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """The scores worth storing: finite numbers (not bools), as floats. Pure."""
    return {
        key: float(value)
        for key, value in scores.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def default_cache_dir() -> Path:
    """Return the default cache directory.

    ``RERANK_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/rerank-cache``, else
    ``~/.cache/rerank-cache``.
    """
    configured = os.environ.get("RERANK_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rerank-cache"


def _ttl_seconds(ttl: float | timedelta | None) -> float | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"ttl must be seconds, a timedelta or None, not {ttl!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    return float(seconds)


def secure_directory(path: Path, *, create: bool = True) -> Path:
    """Check (and create, 0700) a cache directory that only the current user controls.

    Raises:
        CacheDirectoryError: the path is a symlink, not a directory, owned by another user,
            or writable by group or others; or it cannot be created.
    """
    path = Path(os.path.abspath(path.expanduser()))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise CacheDirectoryError(f"cache directory {path} does not exist") from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
        except FileExistsError:
            pass  # another process created it first; checked below
        except OSError as exc:
            raise CacheDirectoryError(
                f"cannot create cache directory {path}: {exc.strerror}"
            ) from None
        info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise CacheDirectoryError(
            f"refusing cache directory {path}: it is a symbolic link. Use the real path."
        )
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirectoryError(f"refusing cache directory {path}: not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheDirectoryError(
            f"refusing cache directory {path}: owned by uid {info.st_uid}, not by you "
            f"(uid {os.getuid()}). Another user could plant entries there."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheDirectoryError(
            f"refusing cache directory {path}: writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}). Run: chmod 700 {path}"
        )
    return path


class ModelStats(BaseModel):
    """Per-model usage and entries."""

    model_config = ConfigDict(frozen=True)

    entries: int = 0
    hits: int = 0
    misses: int = 0
    api_requests: int = 0
    documents_sent: int = 0
    tokens_billed: int = 0
    duplicate_sends: int = 0
    fallbacks: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over pairs looked up (0.0 when nothing was looked up)."""
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class CacheStats(BaseModel):
    """What the cache holds and what it saved, across every process using it.

    ``hits`` and ``misses`` count (query, document) pairs looked up; ``documents_sent``
    counts documents in successful API requests; ``duplicate_sends`` counts scores fetched
    that another process had stored in the meantime; ``store_errors`` counts storage
    operations that failed open.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: int = STATS_SCHEMA_VERSION
    directory: str
    entries: int
    expired_entries: int
    size_bytes: int
    hits: int
    misses: int
    hit_rate: float
    api_requests: int
    documents_sent: int
    tokens_billed: int
    duplicate_sends: int
    store_errors: int
    fallbacks: int
    oldest_entry: datetime | None
    newest_entry: datetime | None
    models: dict[str, ModelStats]


class CheckReport(BaseModel):
    """The result of :meth:`ScoreCache.check`."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    integrity: str
    rows: int
    unsafe_rows: int
    fixed: int
    messages: list[str]


def _chunks(items: list[str], size: int = _CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _model_expr() -> str:
    # Key format "1:<model>:<32 hex>": the model is what lies between.
    return "substr(key, 3, length(key) - 35)"


def _counters(con: sqlite3.Connection) -> dict[str, Counter[str]]:
    try:
        rows = con.execute(f"SELECT model, name, value FROM {_COUNTERS_TABLE}").fetchall()
    except sqlite3.OperationalError:
        return {}
    out: dict[str, Counter[str]] = {}
    for model, name, value in rows:
        out.setdefault(model, Counter())[name] += int(value)
    return out


def _entries(
    con: sqlite3.Connection, now: float
) -> tuple[dict[str, int], int, float | None, float | None]:
    """Live entries per model, expired entries, oldest and newest live store time.

    No full scan on the usual path: keys are ``"1:<model>:<32 hex>"``, so each model's keys
    form one range of the ``(key, raw)`` index. Hop from model to model (one index seek
    each), count each range on the covering index, and subtract the expired rows (found
    through the ``expire_time`` index). A model name containing ``":"`` would make ranges
    nest, so then one grouped scan is used instead.
    """
    totals: dict[str, int] = {}
    low, high = _KEY_HEAD, _KEY_HEAD[:-1] + chr(ord(_KEY_HEAD[-1]) + 1)  # "1:" .. "1;"
    while row := con.execute(
        "SELECT key FROM Cache WHERE key >= ? AND key < ? ORDER BY key LIMIT 1", (low, high)
    ).fetchone():
        key = row[0]
        model = key[2:-33]
        if len(key) < 35 or key[-33] != ":":
            low = key + "\x00"  # not a current-format key: step over it
            continue
        first, past = f"{_KEY_HEAD}{model}:", f"{_KEY_HEAD}{model};"
        count, nested = con.execute(
            "SELECT count(*), total(length(key) != ?) FROM Cache "
            "WHERE key >= ? AND key < ? AND raw = 1",
            (len(first) + 32, first, past),
        ).fetchone()
        if ":" in model or nested:  # another model's keys inside this range
            totals = dict(
                con.execute(
                    f"SELECT {_model_expr()}, count(*) FROM Cache WHERE raw = 1 AND "
                    "substr(key, 1, 2) = ? GROUP BY 1",
                    (_KEY_HEAD,),
                ).fetchall()
            )
            break
        totals[model] = count
        low = past
    dead = dict(
        con.execute(
            f"SELECT {_model_expr()}, count(*) FROM Cache WHERE expire_time IS NOT NULL "
            "AND expire_time <= ? AND raw = 1 AND substr(key, 1, 2) = ? GROUP BY 1",
            (now, _KEY_HEAD),
        ).fetchall()
    )
    entries = {model: total - dead.get(model, 0) for model, total in totals.items()}
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
        entries,
        sum(dead.values()),
        oldest[0] if oldest else None,
        newest[0] if newest else None,
    )


def _collect_stats(
    con: sqlite3.Connection,
    directory: str,
    now: float,
    pending: Mapping[str, Counter[str]] | None = None,
) -> CacheStats:
    counters = _counters(con)
    for model, deltas in (pending or {}).items():
        counters.setdefault(model, Counter()).update(deltas)
    try:
        entries_by_model, expired, oldest, newest = _entries(con, now)
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


def build_stats(
    location: str,
    counters: Mapping[str, Counter[str]],
    entries: Mapping[str, int],
    *,
    expired: int,
    size: int,
    oldest: datetime | None,
    newest: datetime | None,
) -> CacheStats:
    """Assemble :class:`CacheStats` from per-model counters and entry counts (any store).

    Counters filed under the model ``""`` (store errors) count in the totals only.
    """
    models: dict[str, ModelStats] = {}
    for model in sorted((set(counters) | set(entries)) - {""}):
        c = counters.get(model, Counter())
        models[model] = ModelStats(
            entries=max(0, entries.get(model, 0)),
            **{name: c[name] for name in ModelStats.model_fields if name != "entries"},
        )
    total: Counter[str] = Counter()
    for c in counters.values():
        total.update(c)
    looked_up = total["hits"] + total["misses"]
    return CacheStats(
        directory=location,
        entries=sum(m.entries for m in models.values()),
        expired_entries=expired,
        size_bytes=size,
        hits=total["hits"],
        misses=total["misses"],
        hit_rate=total["hits"] / looked_up if looked_up else 0.0,
        api_requests=total["api_requests"],
        documents_sent=total["documents_sent"],
        tokens_billed=total["tokens_billed"],
        duplicate_sends=total["duplicate_sends"],
        store_errors=total["store_errors"],
        fallbacks=total["fallbacks"],
        oldest_entry=oldest,
        newest_entry=newest,
        models=models,
    )


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


REDIS_SCHEMES = ("redis", "rediss", "unix")


def resolve_cache_url(url: str | os.PathLike[str]) -> Path | str:
    """Return the directory a cache URL or path names, or the URL itself for Redis.

    ``redis://``, ``rediss://`` and ``unix://`` URLs come back unchanged (a Redis store);
    ``file:///path`` and plain paths come back as an absolute :class:`Path`.

    Raises:
        ConfigurationError: bytes, a ``file://`` URL naming a remote host, or another scheme.
    """
    text = os.fspath(url)
    if isinstance(text, bytes):
        raise ConfigurationError("the cache URL must be text, not bytes")
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in REDIS_SCHEMES:
        return text
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigurationError(
                f"a file URL names a local directory (file:///path/to/dir), got {text!r}"
            )
        return Path(os.path.abspath(url2pathname(parts.path)))
    if scheme:
        raise ConfigurationError(
            f"unsupported cache URL scheme {scheme + '://'!r}: use redis://, rediss://, "
            "unix://, file:// or a directory path"
        )
    return Path(os.path.abspath(Path(text).expanduser()))


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """True for a damaged file, not for a lock, a full disk or a permission problem."""
    return type(exc) is sqlite3.DatabaseError  # OperationalError & co. are subclasses


def _corrupt_message(db: Path, exc: BaseException) -> str:
    return (
        f"the cache file {db} is damaged ({exc}). Scores can always be re-fetched: run "
        f"`rerank-cache --cache-dir {db.parent} check --fix`, or move the directory away."
    )


_OPEN: weakref.WeakSet[ScoreCache] = weakref.WeakSet()


@atexit.register
def _flush_open_caches() -> None:  # pragma: no cover - runs at interpreter exit
    for cache in list(_OPEN):
        cache.flush_stats()


class ScoreCache:
    """A persistent store of rerank scores, safe across threads and processes.

    Args:
        directory: where the store lives; defaults to :func:`default_cache_dir`. Created
            0700; a symlink, a directory owned by another user, or one writable by others
            is refused.
        ttl: how long a score stays valid: seconds, a ``timedelta``, or None for never.
            Default :data:`DEFAULT_TTL` (30 days).
        size_limit: bytes on disk before the oldest scores are culled (default 1 GiB).
        timeout: seconds a write waits for another process's lock before it is skipped
            (opening waits at least 2 s, then raises :class:`CacheError`).
        stats_flush_interval: seconds between flushes of the hit/miss counters (they are
            also flushed with every write and on close).
        recover: when the cache file is damaged, move it aside and start empty (True) or
            raise :class:`CorruptCacheError` (False).

    Example:
        >>> import tempfile
        >>> with ScoreCache(tempfile.mkdtemp() + "/scores", ttl=3600) as cache:
        ...     cache.stats().entries
        0
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        ttl: float | timedelta | None = _TTL_UNSET,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        timeout: float = 5.0,
        stats_flush_interval: float = 1.0,
        recover: bool = True,
    ) -> None:
        self._ttl = _ttl_seconds(DEFAULT_TTL if ttl is _TTL_UNSET else ttl)
        if size_limit < 1:
            raise ValueError("size_limit must be positive")
        self._directory = secure_directory(
            Path(directory) if directory is not None else default_cache_dir()
        )
        self._size_limit = size_limit
        self._timeout = timeout
        self._open_timeout = max(timeout, _MIN_OPEN_WAIT)
        self._pending = PendingCounters(stats_flush_interval)
        #: Keys being fetched right now by threads of this process (see SingleFlight).
        self.flights = SingleFlight()
        self._closed = False
        self._cache = self._open(recover)
        _OPEN.add(self)

    @classmethod
    def from_url(cls, url: str | os.PathLike[str], **kwargs: Any) -> ScoreStore:
        """Open the score store a URL names: Redis for a fleet, or a directory on disk.

        ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs open a
        :class:`~rerank_cache.redis_store.RedisScoreCache` (``?namespace=NAME`` picks the
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
        target = resolve_cache_url(url)
        if isinstance(target, str):
            from .redis_store import RedisScoreCache  # needs the optional redis-py

            return RedisScoreCache(target, **kwargs)
        return cls(target, **kwargs)

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
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise diskcache.Timeout from None
            raise
        finally:
            con.close()

    def _open_once(self) -> diskcache.Cache:
        self._wait_for_writers()
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
            exists = cache._sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (_COUNTERS_TABLE,),
            ).fetchone()
            if not exists:
                # Like diskcache's own set-up: wait out other writers (a read needs no lock).
                cache._sql_retry(
                    f"CREATE TABLE IF NOT EXISTS {_COUNTERS_TABLE} ("
                    " model TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,"
                    " PRIMARY KEY (model, name))"
                )
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

    # -- properties ----------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The cache directory."""
        return self._directory

    @property
    def ttl(self) -> float | None:
        """Seconds a score stays valid, or None for no expiry."""
        return self._ttl

    def __repr__(self) -> str:
        return f"ScoreCache({str(self._directory)!r}, ttl={self._ttl!r})"

    # -- reads ---------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Look up scores in one batched read; missing, expired or unsafe rows are absent.

        Never raises for storage trouble: it is logged, counted, and reads as misses.
        """
        wanted = list(keys)
        if not wanted:
            return {}
        found: dict[str, float] = {}
        now = time.time()
        try:
            sql = self._cache._sql
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                for key, value in sql(
                    f"SELECT key, value FROM Cache WHERE key IN ({marks}) AND {_SAFE_ROW} "
                    f"AND {_LIVE}",
                    (*chunk, now),
                ):
                    if math.isfinite(value):
                        found[key] = value
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._store_error("read", exc)
            return {}
        return found

    # -- writes --------------------------------------------------------------------------

    def put_many(
        self,
        scores: Mapping[str, float],
        *,
        model: str,
        api_requests: int = 0,
        documents_sent: int = 0,
        tokens_billed: int = 0,
    ) -> bool:
        """Store scores (and usage) in one transaction; return False if it failed open.

        Only finite floats are stored. Scores whose key is already live count as duplicate
        sends (another process fetched the same pair meanwhile).
        """
        clean = finite_scores(scores)
        usage = Counter(
            api_requests=api_requests, documents_sent=documents_sent, tokens_billed=tokens_billed
        )
        pending = self._pending.take()  # written in the same transaction as the scores
        counters: dict[str, Counter[str]] = {m: Counter(c) for m, c in pending.items()}
        try:
            with self._cache.transact():
                duplicates = len(self._live_keys(list(clean))) if clean else 0
                now = time.time()
                expire = None if self._ttl is None else now + self._ttl
                # One UPSERT for the batch instead of Cache.set() per key (a SELECT, an
                # INSERT or UPDATE, and a cull check of three more statements, per key).
                # DO UPDATE (not REPLACE) keeps diskcache's count/size triggers right.
                self._cache._con.executemany(
                    "INSERT INTO Cache (key, raw, store_time, expire_time, access_time,"
                    " access_count, tag, size, mode, filename, value)"
                    " VALUES (?, 1, ?, ?, ?, 0, NULL, 0, 1, NULL, ?)"
                    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
                    " expire_time = excluded.expire_time, access_time = excluded.access_time,"
                    " value = excluded.value, tag = NULL, size = 0, mode = 1, filename = NULL",
                    [(key, now, expire, now, value) for key, value in clean.items()],
                )
                counters.setdefault(model, Counter()).update(usage)
                counters[model]["duplicate_sends"] += duplicates
                # Tidy as we go: drop as many expired rows as we wrote (index range scan).
                self._cache._sql(
                    "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache WHERE "
                    "expire_time IS NOT NULL AND expire_time <= ? LIMIT ?)",
                    (time.time(), len(clean)),
                )
                self._write_counters(counters)
        except (sqlite3.Error, OSError, diskcache.Timeout, TypeError) as exc:
            self._pending.restore(pending)
            self._pending.add(model, usage)  # the usage was paid for: keep counting it
            self._store_error("write", exc)
            return False
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
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._store_error("eviction", exc)

    def _live_keys(self, keys: list[str]) -> set[str]:
        live: set[str] = set()
        now = time.time()
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            live.update(
                row[0]
                for row in self._cache._sql(
                    f"SELECT key FROM Cache WHERE key IN ({marks}) AND raw = 1 AND {_LIVE}",
                    (*chunk, now),
                )
            )
        return live

    # -- counters ------------------------------------------------------------------------

    def record_lookup(self, model: str, *, hits: int, misses: int) -> None:
        """Count pairs looked up; flushed to disk at most every ``stats_flush_interval``."""
        self._pending.add(model, {"hits": hits, "misses": misses})
        if self._pending.due():
            self._flush(wait=False)

    def record_fallback(self, model: str) -> None:
        """Count a rerank that fell back to retrieval order after an API failure."""
        self._pending.add(model, {"fallbacks": 1})

    def _store_error(self, what: str, exc: BaseException) -> None:
        hint = ""
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            hint = f"; the file looks damaged: run `rerank-cache --cache-dir {self._directory} "
            hint += "check --fix`"
        logger.warning(
            "rerank-cache: %s failed in %s (%s: %s); continuing without the cache%s",
            what,
            self._directory,
            type(exc).__name__,
            exc,
            hint,
        )
        self._pending.add("", {"store_errors": 1})

    def _write_counters(self, counters: Mapping[str, Mapping[str, int]]) -> None:
        """Add counters inside the caller's transaction."""
        rows = [
            (model, name, value)
            for model, deltas in counters.items()
            for name, value in deltas.items()
            if value
        ]
        if rows:
            self._cache._con.executemany(
                f"INSERT INTO {_COUNTERS_TABLE} (model, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT(model, name) DO UPDATE SET value = value + excluded.value",
                rows,
            )

    def flush_stats(self) -> None:
        """Write the in-memory hit/miss counters now (fails open: they are kept)."""
        self._flush(wait=True)

    def _flush(self, *, wait: bool) -> None:
        """Write pending counters; with ``wait=False`` give up at once if another process
        holds the write lock (the request path never waits for counters)."""
        if self._closed or not self._pending:
            return
        pending = self._pending.take()
        con = self._cache._con
        if not wait:
            con.execute("PRAGMA busy_timeout = 0")
        try:
            with self._cache.transact():
                self._write_counters(pending)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._pending.restore(pending)
            if wait:
                logger.warning("rerank-cache: could not write stats counters (%s)", exc)
        finally:
            if not wait:
                con.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    # -- maintenance ---------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Return entries, hits, misses, usage and a per-model breakdown (all processes)."""
        return _collect_stats(
            self._cache._con, str(self._directory), time.time(), self._pending.snapshot()
        )

    def clear(self, model: str | None = None) -> int:
        """Delete every score, or only ``model``'s; return how many were deleted.

        Counters are kept (they describe history, not contents).
        """
        with self._cache.transact():
            if model is None:
                cur = self._cache._sql("DELETE FROM Cache")
            else:
                cur = self._cache._sql(
                    f"DELETE FROM Cache WHERE {_model_expr()} = ? AND substr(key, 1, 2) = ?",
                    (model, _KEY_HEAD),
                )
            return int(cur.rowcount)

    def expire(self, now: float | None = None, *, model: str | None = None) -> int:
        """Delete expired scores (only ``model``'s, if given); return how many."""
        when = time.time() if now is None else now
        sql = "DELETE FROM Cache WHERE expire_time IS NOT NULL AND expire_time <= ?"
        args: tuple[Any, ...] = (when,)
        if model is not None:
            sql += f" AND {_model_expr()} = ? AND substr(key, 1, 2) = ?"
            args += (model, _KEY_HEAD)
        with self._cache.transact():
            return int(self._cache._sql(sql, args).rowcount)

    def count(self, *, model: str | None = None, expired: bool = False) -> int:
        """Count live scores (or expired ones), optionally only ``model``'s."""
        sql = "SELECT count(*) FROM Cache WHERE raw = 1 AND "
        sql += "NOT " + _LIVE if expired else _LIVE
        args: tuple[Any, ...] = (time.time(),)
        if model is not None:
            sql += f" AND {_model_expr()} = ? AND substr(key, 1, 2) = ?"
            args += (model, _KEY_HEAD)
        return int(self._cache._sql(sql, args).fetchone()[0])

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
        sql = self._cache._sql
        try:
            integrity = "; ".join(r[0] for r in sql("PRAGMA integrity_check").fetchall())
            rows = int(sql("SELECT count(*) FROM Cache").fetchone()[0])
            unsafe = int(sql(f"SELECT count(*) FROM Cache WHERE NOT ({_SAFE_ROW})").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            integrity, rows, unsafe = str(exc), 0, 0
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
        if fix:
            with self._cache.transact():
                if unsafe:
                    fixed += int(sql(f"DELETE FROM Cache WHERE NOT ({_SAFE_ROW})").rowcount)
                count = int(sql("SELECT count(*) FROM Cache").fetchone()[0])
                sql("UPDATE Settings SET value = ? WHERE key = 'count'", (count,))
                sql("UPDATE Settings SET value = 0 WHERE key = 'size'")
        return CheckReport(
            ok=unsafe == 0 or fixed == unsafe,
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
        return moved

    def close(self) -> None:
        """Flush counters and close the store's connections."""
        if self._closed:
            return
        self.flush_stats()
        self._closed = True
        self._cache.close()
        _OPEN.discard(self)

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False
