"""``RedisScoreCache``: the score store on Redis, shared by a fleet of servers.

The same :class:`~rerank_cache.protocols.ScoreStore` as :class:`~rerank_cache.store.ScoreCache`,
with the same semantics, on a Redis server (6.2 or later) that many hosts share. Everything
lives under a namespace (default ``rerank-cache``), so several applications can share one
Redis::

    {ns}:s:{key}     one score, key from rerank_cache.keys; the value is repr(float) and the
                     time to live is set on the key (SET ... PX), so Redis expires it itself
    {ns}:counters    hash "{counter}:{model}" -> integer (HINCRBY): hits, misses, usage...
    {ns}:entries     hash "{expiry bucket}:{ttl ms}:{model}" -> scores stored (HINCRBY)

Reads are one ``MGET`` per call and never write. A write is one ``MULTI`` per call: the
scores (``SET ... PX ... GET``, which also tells which keys were already live: duplicate
sends), the entries counter and the usage counters. Hit and miss counts are kept in memory
and flushed with the next write, at most every ``stats_flush_interval`` seconds, and on
:meth:`RedisScoreCache.close`.

Entries per model come from the ``{ns}:entries`` counters, not from a ``SCAN``: a ``SCAN``
walks every key of the Redis (a million scores take seconds and tens of megabytes of
replies), while the counters answer in one round trip whatever the size. Each write adds
its count to a bucket named by the time its keys expire (bucket width ttl/512, between one
second and one hour), so :meth:`~RedisScoreCache.stats` counts as live only the buckets
that have not expired yet, with no process having to delete anything. The count drifts
upwards when Redis evicts keys under ``maxmemory`` or someone deletes keys by hand (they
are counted until their TTL passes); :meth:`~RedisScoreCache.check` recounts exactly with a
``SCAN`` and ``check(fix=True)`` rebuilds the counters.

Storage trouble fails open, as with the disk store: a read that fails is a miss, a write
that fails is skipped; both are logged and counted (in memory, flushed once Redis answers
again), and the rerank goes on through the API. Sockets time out after ``timeout``
seconds, and after a connection failure Redis is left alone for ``retry_interval`` seconds
(every read is a miss, every write is skipped, without touching the network), so a dead or
slow Redis costs one timeout per interval, not one per call.

No pickle: a score is stored as the ASCII ``repr`` of a finite float and read back only if
it is exactly that; anything else under our keys reads as a miss and is reported by
:meth:`~RedisScoreCache.check`.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis
except ModuleNotFoundError as exc:  # pragma: no cover - exercised without the extra
    raise ModuleNotFoundError(
        "RedisScoreCache needs redis-py: pip install 'rerank-cache[redis]'", name="redis"
    ) from exc
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .counters import PendingCounters
from .errors import CacheError, ConfigurationError
from .keys import KEY_VERSION, model_of
from .singleflight import SingleFlight
from .store import (
    _COUNTER_NAMES,
    _TTL_UNSET,
    DEFAULT_TTL,
    REDIS_SCHEMES,
    CacheStats,
    CheckReport,
    _ttl_seconds,
    build_stats,
    finite_scores,
)

__all__ = ["DEFAULT_NAMESPACE", "REDIS_SCHEMES", "RedisScoreCache", "parse_score", "redact_url"]

logger = logging.getLogger("rerank_cache")

#: The namespace (key prefix) used when none is given.
DEFAULT_NAMESPACE = "rerank-cache"
#: URL schemes that name a Redis server.

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_SECRET_PARAM = re.compile(r"pass|secret|token|auth", re.IGNORECASE)
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_HEX_DIGITS = 32
_MAX_SCORE_CHARS = 32  # repr() of any finite float is at most 24 characters
_BUCKETS_PER_TTL = 512
_MIN_BUCKET_MS = 1_000
_MAX_BUCKET_MS = 3_600_000
_PRUNE_EVERY = 600.0  # seconds between removals of expired entry buckets, per process
_PRUNE_GRACE_MS = 3_600_000  # keep a bucket an hour past its end: clocks of hosts differ
_SCAN_COUNT = 1_000


def parse_score(raw: bytes | str | None) -> float | None:
    """Return the float a stored value holds, or None unless it is exactly ``repr`` of one.

    Strict on purpose: only what :class:`RedisScoreCache` writes is accepted, so a value
    planted or mangled by other software reads as a miss, never as a wrong score.

    Example:
        >>> parse_score(b"0.7314"), parse_score(b"0.73140"), parse_score(b"nan")
        (0.7314, None, None)
    """
    if raw is None or len(raw) > _MAX_SCORE_CHARS:
        return None
    if isinstance(raw, bytes):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    else:
        text = raw
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or repr(value) != text:
        return None
    return value


def redact_url(url: str) -> str:
    """Return ``url`` with its password (and any secret-looking query value) as ``***``.

    Example:
        >>> redact_url("rediss://app:s3cret@cache.internal:6380/2")
        'rediss://app:***@cache.internal:6380/2'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # Without a colon we cannot tell a user name from a password: hide it.
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = [
        (name, "***" if _SECRET_PARAM.search(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/")))


def _split_namespace(url: str) -> tuple[str, str | None]:
    """Take a ``namespace`` query parameter out of a Redis URL (redis-py would refuse it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [value for name, value in query if name == "namespace"]
    if len(names) > 1:
        raise ConfigurationError("the cache URL names more than one namespace")
    rest = [(name, value) for name, value in query if name != "namespace"]
    return urlunsplit(parts._replace(query=urlencode(rest))), (names[0] if names else None)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _bucket_width(ttl_ms: int) -> int:
    return min(max(ttl_ms // _BUCKETS_PER_TTL, _MIN_BUCKET_MS), _MAX_BUCKET_MS)


def _bucket_field(model: str, ttl_ms: int | None, now_ms: int) -> str:
    """The ``{ns}:entries`` field counting scores of ``model`` written now with ``ttl_ms``."""
    if ttl_ms is None:
        return f"0:0:{model}"  # never expires
    width = _bucket_width(ttl_ms)
    end = -(-(now_ms + ttl_ms) // width) * width  # expiry rounded up to the bucket's end
    return f"{end}:{ttl_ms}:{model}"


class _Bucket:
    """One parsed ``{ns}:entries`` field: end of expiry (0 = never), ttl, model."""

    __slots__ = ("end", "model", "ttl")

    def __init__(self, end: int, ttl: int, model: str) -> None:
        self.end, self.ttl, self.model = end, ttl, model

    @classmethod
    def parse(cls, field: bytes | str) -> _Bucket | None:
        end, _, rest = _text(field).partition(":")
        ttl, sep, model = rest.partition(":")
        if not sep or not end.isdigit() or not ttl.isdigit():
            return None
        return cls(int(end), int(ttl), model)

    def live(self, now_ms: int) -> bool:
        return self.end == 0 or self.end > now_ms

    def stored_between(self) -> tuple[int, int] | None:
        """Earliest and latest store time (ms) of the scores counted here."""
        if self.end == 0:
            return None
        return self.end - _bucket_width(self.ttl) - self.ttl, self.end - self.ttl


_OPEN: weakref.WeakSet[RedisScoreCache] = weakref.WeakSet()


@atexit.register
def _flush_open_caches() -> None:  # pragma: no cover - runs at interpreter exit
    for cache in list(_OPEN):
        cache.flush_stats()


class RedisScoreCache:
    """A store of rerank scores on Redis, shared by every process and host that uses it.

    Implements :class:`~rerank_cache.protocols.ScoreStore` like
    :class:`~rerank_cache.store.ScoreCache`, so :class:`~rerank_cache.CachedReRanker` and
    the ``rerank-cache`` command work with either. Nothing connects until first use.

    Args:
        url_or_client: a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, optionally
            with ``?namespace=NAME``; or a ready ``redis.Redis`` client (its own timeouts
            and retries then apply, and :meth:`close` leaves it open).
        ttl: how long a score stays valid: seconds, a ``timedelta``, or None for never.
            Redis expires the keys itself. Default :data:`~rerank_cache.store.DEFAULT_TTL`.
        namespace: the key prefix that separates applications sharing a Redis (letters,
            digits, ``_ . -``); default the URL's ``namespace`` parameter, else
            :data:`DEFAULT_NAMESPACE`.
        timeout: seconds to connect and to wait for each reply before failing open.
        stats_flush_interval: seconds between flushes of the hit/miss counters (they are
            also flushed with every write and on close).
        retry_interval: after a connection failure, seconds during which Redis is not tried
            (reads miss, writes are skipped, both counted) before it is tried again.

    Example:
        >>> cache = RedisScoreCache("redis://:s3cret@localhost:6379/0", namespace="search")
        >>> cache.location
        'redis://:***@localhost:6379/0?namespace=search'
        >>> cache.close()
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        ttl: float | timedelta | None = _TTL_UNSET,
        namespace: str | None = None,
        timeout: float = 0.5,
        stats_flush_interval: float = 1.0,
        retry_interval: float = 5.0,
    ) -> None:
        self._ttl = _ttl_seconds(DEFAULT_TTL if ttl is _TTL_UNSET else ttl)
        self._ttl_ms = None if self._ttl is None else max(1, math.ceil(self._ttl * 1000))
        if not timeout > 0 or not math.isfinite(timeout):
            raise ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if retry_interval < 0:
            raise ConfigurationError(f"retry_interval must be >= 0, got {retry_interval!r}")
        self._secrets: tuple[str, ...] = ()
        if isinstance(url_or_client, str):
            url, url_namespace = _split_namespace(url_or_client)
            if urlsplit(url).scheme not in REDIS_SCHEMES:
                raise ConfigurationError(
                    f"not a Redis URL: {redact_url(url)} (use redis://, rediss:// or unix://)"
                )
            if namespace is not None and url_namespace not in (None, namespace):
                raise ConfigurationError(
                    f"two namespaces given: {url_namespace!r} in the URL, {namespace!r} "
                    "as an argument"
                )
            namespace = url_namespace if namespace is None else namespace
            parts = urlsplit(url)
            self._secrets = tuple(
                s
                for s in (
                    parts.password,
                    *(v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k)),
                )
                if s
            )
            try:
                self._client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    # One immediate reconnect for a pooled connection the server dropped; no
                    # backoff and no retry on timeouts: a slow Redis must fail open fast.
                    retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                )
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"invalid Redis URL {redact_url(url)}: {self._describe(exc)}"
                ) from None
            self._owns_client = True
            self._url = redact_url(url)
        else:
            self._client = url_or_client
            self._owns_client = False
            self._url = _describe_client(url_or_client)
        namespace = DEFAULT_NAMESPACE if namespace is None else namespace
        if not _NAMESPACE.match(namespace):
            raise ConfigurationError(
                f"namespace must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                f"letter or digit), got {namespace!r}"
            )
        self._namespace = namespace
        self._score_prefix = f"{namespace}:s:"
        self._counters_key = f"{namespace}:counters"
        self._entries_key = f"{namespace}:entries"
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._pending = PendingCounters(stats_flush_interval)
        self._last_prune = 0.0
        self._down_until = 0.0
        self._down = False
        #: Keys being fetched right now by threads of this process (see SingleFlight).
        self.flights = SingleFlight()
        self._closed = False
        _OPEN.add(self)

    # -- properties ----------------------------------------------------------------------

    @property
    def location(self) -> str:
        """Where the scores live, for messages: the URL without its password, and namespace."""
        sep = "&" if urlsplit(self._url).query else "?"
        return f"{self._url}{sep}namespace={self._namespace}"

    @property
    def namespace(self) -> str:
        """The key prefix of this application's scores and counters."""
        return self._namespace

    @property
    def ttl(self) -> float | None:
        """Seconds a score stays valid, or None for no expiry."""
        return self._ttl

    def __repr__(self) -> str:
        return f"RedisScoreCache({self.location!r}, ttl={self._ttl!r})"

    def _score_key(self, key: str) -> str:
        return self._score_prefix + key

    # -- failing open --------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _is_down(self) -> bool:
        with self._lock:
            return self._down and time.monotonic() < self._down_until

    def _skip(self, what: str) -> None:
        logger.debug("rerank-cache: %s skipped: Redis at %s is down", what, self.location)
        self._pending.add("", Counter(store_errors=1))

    def _store_error(self, what: str, exc: BaseException) -> None:
        unreachable = isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))
        if unreachable:
            with self._lock:
                self._down = True
                self._down_until = time.monotonic() + self._retry_interval
        logger.warning(
            "rerank-cache: %s failed in Redis at %s (%s); continuing without the cache%s",
            what,
            self.location,
            self._describe(exc),
            f" for {self._retry_interval:g} s" if unreachable and self._retry_interval else "",
        )
        self._pending.add("", Counter(store_errors=1))

    def _up(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.warning("rerank-cache: Redis at %s answers again", self.location)

    def _unavailable(self, exc: BaseException) -> CacheError:
        return CacheError(
            f"cannot use Redis at {self.location} ({self._describe(exc)}). Check that "
            "redis-server is running and reachable, and the URL."
        )

    def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            CacheError: Redis cannot be reached or refused the connection (the message
                names the location, never the password).
        """
        try:
            self._client.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        self._up()

    # -- reads ---------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Look up scores with one ``MGET``; missing, expired or malformed values are absent.

        Never raises for storage trouble: it is logged, counted, and reads as misses.
        """
        wanted = list(keys)
        if not wanted:
            return {}
        if self._is_down():
            self._skip("read")
            return {}
        try:
            values = self._client.mget([self._score_key(key) for key in wanted])
        except (RedisError, OSError) as exc:
            self._store_error("read", exc)
            return {}
        self._up()
        found: dict[str, float] = {}
        for key, raw in zip(wanted, values, strict=True):
            value = parse_score(raw)
            if value is not None:
                found[key] = value
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
        """Store scores (and usage) in one ``MULTI``; return False if it failed open.

        Only finite floats are stored. Scores whose key was already live count as
        duplicate sends (another process fetched the same pair meanwhile).
        """
        clean = finite_scores(scores)
        usage = Counter(
            api_requests=api_requests, documents_sent=documents_sent, tokens_billed=tokens_billed
        )
        if self._is_down():
            self._skip("write")
            self._pending.add(model, usage)
            return False
        pending = self._pending.take()
        counters: dict[str, Counter[str]] = {m: Counter(c) for m, c in pending.items()}
        counters.setdefault(model, Counter()).update(usage)
        bucket = _bucket_field(model, self._ttl_ms, int(time.time() * 1000))
        try:
            pipe = self._client.pipeline(transaction=True)
            for key, value in clean.items():
                pipe.set(self._score_key(key), repr(value), px=self._ttl_ms, get=True)
            if clean:
                pipe.hincrby(self._entries_key, bucket, len(clean))
            self._queue_counters(pipe, counters)
            results = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._pending.restore(pending)
            self._store_error("write", exc)
            self._pending.add(model, usage)
            return False
        self._up()
        previous = results[: len(clean)]
        refused = sum(isinstance(r, Exception) for r in previous)
        duplicates = sum(r is not None and not isinstance(r, Exception) for r in previous)
        if duplicates:
            self._pending.add(model, Counter(duplicate_sends=duplicates))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            # A key or counter of ours holds another type (planted, or other software):
            # the rest of the transaction applied. `check --fix` removes such keys.
            self._store_error("write", failed[0])
        if refused or duplicates:
            # Keys already live are counted in the bucket of their first write (a race
            # between two hosts: seconds apart); refused keys are not stored at all.
            self._uncount(bucket, refused + duplicates)
        self._maybe_prune()
        return not failed

    def _queue_counters(self, pipe: Any, counters: Mapping[str, Counter[str]]) -> None:
        for model, deltas in counters.items():
            for name, value in deltas.items():
                if value:
                    pipe.hincrby(self._counters_key, f"{name}:{model}", value)

    def _uncount(self, bucket: str, n: int) -> None:
        try:
            self._client.hincrby(self._entries_key, bucket, -n)
        except (RedisError, OSError) as exc:
            logger.debug("rerank-cache: could not correct the entry count (%s)", exc)

    def _maybe_prune(self) -> None:
        """Drop entry buckets long expired, at most every few minutes per process."""
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        now_ms = int(time.time() * 1000)
        try:
            dead = [
                field
                for field in self._client.hkeys(self._entries_key)
                if (b := _Bucket.parse(field)) is not None and not b.live(now_ms - _PRUNE_GRACE_MS)
            ]
            if dead:
                self._client.hdel(self._entries_key, *dead)
        except (RedisError, OSError) as exc:
            logger.debug("rerank-cache: could not prune expired entry counts (%s)", exc)

    # -- counters ------------------------------------------------------------------------

    def record_lookup(self, model: str, *, hits: int, misses: int) -> None:
        """Count pairs looked up; flushed to Redis at most every ``stats_flush_interval``."""
        self._pending.add(model, Counter(hits=hits, misses=misses))
        if self._pending.due() and not self._is_down():
            self.flush_stats()

    def record_fallback(self, model: str) -> None:
        """Count a rerank that fell back to retrieval order after an API failure."""
        self._pending.add(model, Counter(fallbacks=1))

    def flush_stats(self) -> None:
        """Write the in-memory counters now (fails open: they are kept for a later flush).

        Tries even while Redis is considered down: it is called on purpose (and on close).
        """
        if self._closed or not self._pending:
            return
        pending = self._pending.take()
        try:
            pipe = self._client.pipeline(transaction=True)
            self._queue_counters(pipe, pending)
            pipe.execute()
        except (RedisError, OSError) as exc:
            self._pending.restore(pending)
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
                with self._lock:
                    self._down = True
                    self._down_until = time.monotonic() + self._retry_interval
            logger.warning(
                "rerank-cache: could not write stats counters to Redis at %s (%s)",
                self.location,
                self._describe(exc),
            )
            return
        self._up()

    # -- maintenance (these raise CacheError when Redis cannot be used) --------------------

    def stats(self) -> CacheStats:
        """Return entries, hits, misses, usage and a per-model breakdown (all processes).

        One round trip, read-only, fast at any size: entries come from the per-model entry
        counters (see the module docs), ``size_bytes`` is the whole Redis server's
        ``used_memory``, and ``expired_entries`` is always 0 (Redis deletes expired keys).
        ``oldest_entry``/``newest_entry`` are known to within a bucket (ttl/512, at most
        an hour), and only for scores that expire.

        Raises:
            CacheError: Redis cannot be reached.
        """
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(self._counters_key)
            pipe.hgetall(self._entries_key)
            pipe.info("memory")
            counters_raw, entries_raw, memory = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        for result in (counters_raw, entries_raw):
            if isinstance(result, Exception):
                raise self._unavailable(result)
        now_ms = int(time.time() * 1000)
        counters = _parse_counters(counters_raw)
        for model, deltas in self._pending.snapshot().items():
            counters.setdefault(model, Counter()).update(deltas)
        entries: Counter[str] = Counter()
        oldest: int | None = None
        newest: int | None = None
        for field, value in entries_raw.items():
            bucket = _Bucket.parse(field)
            count = _int_or_none(value)
            if bucket is None or count is None or not bucket.live(now_ms):
                continue
            entries[bucket.model] += count
            span = bucket.stored_between() if count > 0 else None
            if span is not None:
                oldest = span[0] if oldest is None else min(oldest, span[0])
                newest = span[1] if newest is None else max(newest, span[1])
        size = 0 if isinstance(memory, Exception) else int(memory.get("used_memory", 0))
        return _build_stats(self.location, counters, entries, size, now_ms, oldest, newest)

    def clear(self, model: str | None = None) -> int:
        """Delete every score of this namespace, or only ``model``'s; return how many.

        Counters are kept (they describe history, not contents).

        Raises:
            CacheError: Redis cannot be reached.
        """
        if model is None:
            pattern = self._score_prefix + "*"
        else:
            escaped = _GLOB_SPECIAL.sub(r"\\\1", model)
            pattern = f"{self._score_prefix}{KEY_VERSION}:{escaped}:" + "?" * _HEX_DIGITS
        deleted = 0
        try:
            for batch in self._scan(pattern):
                deleted += int(self._client.unlink(*batch))
            if model is None:
                self._client.delete(self._entries_key)
            else:
                fields = [
                    field
                    for field in self._client.hkeys(self._entries_key)
                    if (b := _Bucket.parse(field)) is not None and b.model == model
                ]
                if fields:
                    self._client.hdel(self._entries_key, *fields)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return deleted

    def expire(self, now: float | None = None, *, model: str | None = None) -> int:
        """Return 0: Redis deletes expired scores itself (each key carries its TTL)."""
        del now, model
        return 0

    def count(self, *, model: str | None = None, expired: bool = False) -> int:
        """Count live scores, optionally only ``model``'s, from the entry counters.

        ``expired=True`` counts 0: Redis deletes expired scores itself.

        Raises:
            CacheError: Redis cannot be reached.
        """
        if expired:
            return 0
        stats = self.stats()
        if model is None:
            return stats.entries
        found = stats.models.get(model)
        return found.entries if found else 0

    def check(self, *, fix: bool = False) -> CheckReport:
        """Scan every key of the namespace; with ``fix``, delete bad ones and recount.

        Unsafe keys (a value that is not a finite float's ``repr``, another Redis type, or
        a key name that is not a score key) are never read as scores; ``fix`` deletes them.
        The entry counters are compared with what the scan found (they drift when Redis
        evicts keys or someone deletes them); ``fix`` rebuilds them.

        Raises:
            CacheError: Redis cannot be reached.
        """
        messages: list[str] = []
        rows = 0
        unsafe: list[bytes | str] = []
        found: Counter[str] = Counter()
        rebuilt: Counter[str] = Counter()
        now_ms = int(time.time() * 1000)
        try:
            for batch in self._scan(self._score_prefix + "*"):
                values = self._client.mget(batch)
                ttls: list[int] = []
                if fix:
                    pipe = self._client.pipeline(transaction=False)
                    for key in batch:
                        pipe.pttl(key)
                    ttls = pipe.execute()
                for index, (key, raw) in enumerate(zip(batch, values, strict=True)):
                    name = _text(key)[len(self._score_prefix) :]
                    if raw is None and not self._client.exists(key):
                        continue  # expired or deleted while we scanned
                    rows += 1
                    model = model_of(name)
                    if raw is None or model is None or parse_score(raw) is None:
                        unsafe.append(key)
                        continue
                    found[model] += 1
                    if fix:
                        remaining = int(ttls[index])
                        if remaining < 0:
                            rebuilt[_bucket_field(model, None, now_ms)] += 1
                        else:
                            ttl = max(remaining, self._ttl_ms or 0)
                            rebuilt[_bucket_field(model, ttl, now_ms + remaining - ttl)] += 1
            bad_fields = self._bad_hash_fields()
            counted: Counter[str] = Counter()
            if self._entries_key not in bad_fields or bad_fields[self._entries_key]:
                for field, value in self._client.hgetall(self._entries_key).items():
                    bucket, count = _Bucket.parse(field), _int_or_none(value)
                    if bucket is not None and count and bucket.live(now_ms):
                        counted[bucket.model] += count
            counted = +counted  # drop models counted down to zero
            fixed = 0
            if unsafe:
                messages.append(f"{len(unsafe)} unsafe key(s): not a score of ours (never read)")
            for name, fields in bad_fields.items():
                messages.append(
                    f"{name}: {len(fields)} malformed field(s) (ignored)"
                    if fields
                    else f"{name} is not a hash (counters written there are lost)"
                )
            if counted != found:
                messages.append(
                    f"entry counters say {sum(counted.values()):,}, the scan found "
                    f"{sum(found.values()):,}: keys were evicted or deleted outside "
                    "rerank-cache" + ("" if fix else " (--fix recounts)")
                )
            if fix:
                for start in range(0, len(unsafe), _SCAN_COUNT):
                    fixed += int(self._client.unlink(*unsafe[start : start + _SCAN_COUNT]))
                for key, fields in bad_fields.items():
                    if fields:
                        self._client.hdel(key, *fields)
                    else:
                        self._client.delete(key)  # not a hash: ours were lost anyway
                pipe = self._client.pipeline(transaction=True)
                pipe.delete(self._entries_key)
                if rebuilt:
                    mapping: dict[Any, Any] = dict(rebuilt)
                    pipe.hset(self._entries_key, mapping=mapping)
                pipe.execute()
                messages.append(f"recounted {sum(found.values()):,} entries")
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return CheckReport(
            ok=(not unsafe or fixed == len(unsafe)) and (not bad_fields or fix),
            integrity="ok",
            rows=rows,
            unsafe_rows=len(unsafe),
            fixed=fixed,
            messages=messages,
        )

    def _bad_hash_fields(self) -> dict[str, list[bytes | str]]:
        """Malformed fields of the two hashes; an empty list: the key is not a hash at all."""
        bad: dict[str, list[bytes | str]] = {}
        for name in (self._counters_key, self._entries_key):
            if self._client.type(name) not in (b"hash", "hash", b"none", "none"):
                bad[name] = []
                continue
            for field, value in self._client.hgetall(name).items():
                if name == self._counters_key:
                    counter, sep, _ = _text(field).partition(":")
                    good = bool(sep) and counter in _COUNTER_NAMES
                else:
                    good = _Bucket.parse(field) is not None
                if not good or _int_or_none(value) is None:
                    bad.setdefault(name, []).append(field)
        return bad

    def _scan(self, pattern: str) -> Iterator[list[Any]]:
        batch: list[Any] = []
        for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT):
            batch.append(key)
            if len(batch) >= _SCAN_COUNT:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Flush counters and close the connections (of a client this store created)."""
        if self._closed:
            return
        self.flush_stats()
        self._closed = True
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect()
        _OPEN.discard(self)

    def __enter__(self) -> RedisScoreCache:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _parse_counters(raw: Mapping[Any, Any]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for field, value in raw.items():
        name, sep, model = _text(field).partition(":")
        number = _int_or_none(value)
        if sep and name in _COUNTER_NAMES and number is not None:
            out.setdefault(model, Counter())[name] += number
    return out


def _build_stats(
    location: str,
    counters: Mapping[str, Counter[str]],
    entries: Mapping[str, int],
    size: int,
    now_ms: int,
    oldest: int | None,
    newest: int | None,
) -> CacheStats:
    def when(ms: int | None) -> datetime | None:
        if ms is None:
            return None
        return datetime.fromtimestamp(min(ms, now_ms) / 1000, tz=timezone.utc)

    # Redis deletes expired keys itself: nothing is ever expired-but-stored.
    return build_stats(
        location,
        counters,
        entries,
        expired=0,
        size=size,
        oldest=when(oldest),
        newest=when(newest),
    )


def _describe_client(client: redis.Redis) -> str:
    """A password-free URL for a client we were handed."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    kind = getattr(pool, "connection_class", None)
    db = kwargs.get("db", 0)
    if isinstance(kind, type) and issubclass(kind, redis.UnixDomainSocketConnection):
        return f"unix://{kwargs.get('path', '')}?db={db}"
    tls = isinstance(kind, type) and issubclass(kind, redis.SSLConnection)
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"{'rediss' if tls else 'redis'}://{host}:{port}/{db}"
