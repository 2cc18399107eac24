"""``RedisScoreCache``: the score store on Redis, shared by a fleet of servers.

The same :class:`~rerank_cache.stores.protocols.ScoreStore` as
:class:`~rerank_cache.stores.disk.ScoreCache`, with the same semantics, on a Redis server
(6.2 or later) that many hosts share. Everything lives under a namespace (default
``rerank-cache``), so several applications can share one Redis; the layout, and the pure
code that writes and parses it, are in :mod:`rerank_cache.stores.redis_format`.

Reads are one ``MGET`` per call and never write. A write is one ``MULTI`` per call: the
scores (``SET ... PX ... GET``, which also tells which keys were already live: duplicate
sends), the entries counter and the usage counters. Hit and miss counts are kept in memory
and flushed with the next write, by a background thread every ``stats_flush_interval`` s, and on
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

import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Hashable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

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

from ..errors import ConfigurationError
from .flusher import CounterWriter
from .memory import DEFAULT_MEMORY_ENTRIES
from .protocols import REDIS_SCHEMES, TTL_UNSET
from .redis_admin import RedisAdmin
from .redis_format import (
    DEFAULT_NAMESPACE,
    NAMESPACE,
    Bucket,
    bucket_field,
    encode_score,
    live_entry,
    parse_entry,
    parse_score,
    redact_url,
    split_namespace,
    url_secrets,
)

__all__ = ["DEFAULT_NAMESPACE", "REDIS_SCHEMES", "RedisScoreCache", "parse_score", "redact_url"]

logger = logging.getLogger("rerank_cache")

_PRUNE_EVERY = 600.0  # seconds between removals of expired entry buckets, per process
_PRUNE_GRACE_MS = 3_600_000  # keep a bucket an hour past its end: clocks of hosts differ
#: What counts as storage trouble (fails open); the first three mean Redis is unreachable.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _queue_counters(pipe: Any, key: str, counters: Mapping[str, Mapping[str, int]]) -> None:
    for model, deltas in counters.items():
        for name, value in deltas.items():
            if value:
                pipe.hincrby(key, f"{name}:{model}", value)


def _write_counters(
    client: Any, key: str, counters: Mapping[str, Mapping[str, int]], *, transaction: bool
) -> None:
    """Add ``counters`` to the counters hash ``key`` in one pipeline (MULTI if ``transaction``)."""
    pipe = client.pipeline(transaction=transaction)
    _queue_counters(pipe, key, counters)
    pipe.execute()


class RedisScoreCache(RedisAdmin):
    """A store of rerank scores on Redis, shared by every process and host that uses it.

    Implements :class:`~rerank_cache.stores.protocols.AdminStore` like
    :class:`~rerank_cache.stores.disk.ScoreCache`, so :class:`~rerank_cache.CachedReRanker` and
    the ``rerank-cache`` command work with either. Nothing connects until first use.

    Args:
        url_or_client: a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, optionally
            with ``?namespace=NAME``; or a ready ``redis.Redis`` client (its own timeouts
            and retries then apply, and :meth:`close` leaves it open).
        ttl: how long a score stays valid: seconds, a ``timedelta``, or None for never.
            Redis expires the keys itself. Default
            :data:`~rerank_cache.stores.protocols.DEFAULT_TTL`.
        namespace: the key prefix that separates applications sharing a Redis (letters,
            digits, ``_ . -``); default the URL's ``namespace`` parameter, else
            :data:`~rerank_cache.stores.redis_format.DEFAULT_NAMESPACE`.
        timeout: seconds to connect and to wait for each reply before failing open.
        stats_flush_interval: seconds between flushes of the hit/miss counters (they are
            also flushed with every write and on close).
        retry_interval: after a connection failure, seconds during which Redis is not tried
            (reads miss, writes are skipped, both counted) before it is tried again.
        stale_ttl: how long past its ttl a score is kept for ``on_error="stale"`` (seconds,
            a ``timedelta``, or None: not kept). The key lives ttl + stale_ttl and holds its
            real expiry, so normal reads miss it after the ttl; it is not counted as an entry.
        memory_entries: scores this process keeps in memory in front of Redis (recently
            read or written, each until it expires); 0 turns the memory tier off. Default
            :data:`~rerank_cache.stores.memory.DEFAULT_MEMORY_ENTRIES` (50,000: about 12 MB). A
            ``clear`` in any process is seen by the others on their next call: every call
            reads a generation key, in the same round trip as the ``MGET``.

    Example:
        >>> cache = RedisScoreCache("redis://:s3cret@localhost:6379/0", namespace="search")
        >>> cache.location
        'redis://:***@localhost:6379/0?namespace=search'
        >>> cache.close()
    """

    _failures: tuple[type[BaseException], ...] = (RedisError, OSError)
    #: What counts as Redis being unreachable (then left alone for ``retry_interval``).
    _unreachable: tuple[type[BaseException], ...] = _UNREACHABLE
    _schemes: tuple[str, ...] = REDIS_SCHEMES
    _use = "use redis://, rediss:// or unix://"
    #: Whether writes run in MULTI/EXEC and a pipeline may MGET (not on a cluster).
    _transaction = True
    _client: Any

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        ttl: float | timedelta | None = TTL_UNSET,
        namespace: str | None = None,
        timeout: float = 0.5,
        stats_flush_interval: float = 1.0,
        retry_interval: float = 5.0,
        stale_ttl: float | timedelta | None = None,
        memory_entries: int = DEFAULT_MEMORY_ENTRIES,
    ) -> None:
        super().__init__(
            ttl=ttl,
            stats_flush_interval=stats_flush_interval,
            stale_ttl=stale_ttl,
            memory_entries=memory_entries,
        )
        self._ttl_ms = None if self._ttl is None else max(1, math.ceil(self._ttl * 1000))
        # Scores that never expire need no stale window: they are written as before.
        self._stale_ms = (
            None
            if self._stale_ttl is None or self._ttl_ms is None
            else math.ceil(self._stale_ttl * 1000)
        )
        if not timeout > 0 or not math.isfinite(timeout):
            raise ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if retry_interval < 0:
            raise ConfigurationError(f"retry_interval must be >= 0, got {retry_interval!r}")
        self._secrets: tuple[str, ...] = ()
        if isinstance(url_or_client, str):
            url, url_namespace = split_namespace(url_or_client)
            if urlsplit(url).scheme not in self._schemes:
                raise ConfigurationError(f"not a Redis URL: {redact_url(url)} ({self._use})")
            if namespace is not None and url_namespace not in (None, namespace):
                raise ConfigurationError(
                    f"two namespaces given: {url_namespace!r} in the URL, {namespace!r} "
                    "as an argument"
                )
            namespace = url_namespace if namespace is None else namespace
            self._secrets = url_secrets(url)
            try:
                self._client = self._connect(url, timeout)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"invalid Redis URL {redact_url(url)}: {self._describe(exc)}"
                ) from None
            self._owns_client = True
            self._url = redact_url(url)
        else:
            self._client = url_or_client
            self._owns_client = False
            self._url = self._describe_client(url_or_client)
        namespace = DEFAULT_NAMESPACE if namespace is None else namespace
        if not NAMESPACE.match(namespace):
            raise ConfigurationError(
                f"namespace must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                f"letter or digit), got {namespace!r}"
            )
        self._namespace = namespace
        self._score_prefix = f"{namespace}:s:"
        self._counters_key = self._meta_key("counters")
        self._entries_key = self._meta_key("entries")
        self._generation_key = self._meta_key("generation")
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self._down_until = 0.0
        self._down = False
        self._opened()

    # -- properties ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RedisScoreCache({self.location!r}, ttl={self._ttl!r})"

    def _connect(self, url: str, timeout: float) -> Any:
        """A client for ``url`` (checked to be one of ``_schemes``); may raise ValueError."""
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate reconnect for a pooled connection the server dropped; no
            # backoff and no retry on timeouts: a slow Redis must fail open fast.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )

    def _describe_client(self, client: Any) -> str:
        return _describe_client(client)

    # -- failing open (StoreBase hooks) ---------------------------------------------------

    @property
    def _where(self) -> str:
        return f"Redis at {self.location}"

    def _describe(self, exc: BaseException) -> str:
        described = super()._describe(exc)
        for secret in self._secrets:
            described = described.replace(secret, "***")
        return described

    def _is_down(self) -> bool:
        with self._lock:
            return self._down and time.monotonic() < self._down_until

    def _failed(self, exc: BaseException) -> str:
        if not isinstance(exc, self._unreachable):
            return ""
        with self._lock:
            self._down = True
            self._down_until = time.monotonic() + self._retry_interval
        return f" for {self._retry_interval:g} s" if self._retry_interval else ""

    def _reachable(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.warning("rerank-cache: Redis at %s answers again", self.location)

    def _write_counters_now(self, pending: Mapping[str, Counter[str]], *, wait: bool) -> None:
        del wait  # a socket timeout bounds every call already
        _write_counters(self._client, self._counters_key, pending, transaction=self._transaction)

    def _release(self) -> None:
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect()

    # -- reads and writes (StoreBase hooks): one MGET, one MULTI ---------------------------

    def _read_scores(self, keys: list[str]) -> dict[str, float]:
        return self._read_until(keys, int(time.time() * 1000))

    def _read_stale_scores(self, keys: list[str]) -> dict[str, float]:
        return self._read_until(keys, int(time.time() * 1000) - (self._stale_ms or 0))

    def _read_until(self, keys: list[str], expired_before_ms: int) -> dict[str, float]:
        """Scores of ``keys`` whose real expiry (if stored) is after ``expired_before_ms``."""
        values = self._mget([self._score_key(key) for key in keys])
        found: dict[str, float] = {}
        for key, raw in zip(keys, values, strict=True):
            entry = parse_entry(raw)
            if entry is not None and (entry[1] is None or entry[1] > expired_before_ms):
                found[key] = entry[0]
        return found

    def _read_entries(
        self, keys: list[str]
    ) -> tuple[Hashable, dict[str, tuple[float, float | None]]]:
        # One round trip, commands in order: the generation before the scores, then each
        # score's remaining time to live (PTTL: -1 none, -2 gone meanwhile).
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._generation_key)
        names = [self._score_key(key) for key in keys]
        if names:
            if self._transaction:
                pipe.mget(names)
            else:  # a cluster pipeline refuses MGET: one GET a key, routed to its node
                for name in names:
                    pipe.get(name)
            for name in names:
                pipe.pttl(name)
        now = time.time()
        replies = pipe.execute()
        generation = replies[0]
        if not names:
            return generation, {}
        values = replies[1] if self._transaction else replies[1 : 1 + len(names)]
        ttls = replies[-len(names) :]
        found: dict[str, tuple[float, float | None]] = {}
        for key, raw, ttl_ms in zip(keys, values, ttls, strict=True):
            entry = live_entry(raw, ttl_ms, now)
            if entry is not None:
                found[key] = entry
        return generation, found

    def _write_scores(
        self, scores: dict[str, float], model: str, counters: dict[str, Counter[str]]
    ) -> bool:
        now_ms = int(time.time() * 1000)
        bucket = bucket_field(model, self._ttl_ms, now_ms)
        expires, px = None, self._ttl_ms
        if self._stale_ms is not None and self._ttl_ms is not None:
            expires, px = now_ms + self._ttl_ms, self._ttl_ms + self._stale_ms
        pipe = self._client.pipeline(transaction=self._transaction)
        for key, value in scores.items():
            # GET returns the value the key held: a live one means a duplicate send.
            pipe.set(self._score_key(key), encode_score(value, expires), px=px, get=True)
        if scores:
            pipe.hincrby(self._entries_key, bucket, len(scores))
        self._queue_counters(pipe, counters)
        results = pipe.execute(raise_on_error=False)
        previous = results[: len(scores)]
        refused = sum(isinstance(r, Exception) for r in previous)
        duplicates = sum(_was_live(r, now_ms) for r in previous)
        if duplicates:
            self._pending.add(model, {"duplicate_sends": duplicates})
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
        _queue_counters(pipe, self._counters_key, counters)

    def _counter_writer(self) -> CounterWriter:
        return functools.partial(
            _write_counters, self._client, self._counters_key, transaction=self._transaction
        )

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
                if (b := Bucket.parse(field)) is not None and not b.live(now_ms - _PRUNE_GRACE_MS)
            ]
            if dead:
                self._client.hdel(self._entries_key, *dead)
        except (RedisError, OSError) as exc:
            logger.debug("rerank-cache: could not prune expired entry counts (%s)", exc)


def _was_live(previous: Any, now_ms: int) -> bool:
    """Whether a value ``SET ... GET`` replaced was a live score (a duplicate send); one
    kept past its ttl for ``on_error="stale"`` was not."""
    if previous is None or isinstance(previous, Exception):
        return False
    entry = parse_entry(previous)
    return entry is None or entry[1] is None or entry[1] > now_ms


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
