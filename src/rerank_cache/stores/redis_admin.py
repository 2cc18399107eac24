"""The Redis store's key names and maintenance: stats, clear, count, check, export, import.

:class:`RedisAdmin` is the part of :class:`~rerank_cache.stores.redis.RedisScoreCache` that
the ``rerank-cache`` command uses (the :class:`~rerank_cache.stores.protocols.AdminStore`
methods beyond the request path), with the names of the namespace's keys that both use.
These raise :class:`~rerank_cache.errors.CacheError` when Redis cannot be used, where the
request path fails open. Connecting, failing open, reads and writes are in
:mod:`rerank_cache.stores.redis`; the layout and its parsing in
:mod:`rerank_cache.stores.redis_format`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from ..errors import CacheError
from ..keys import HASH_DIGITS, key_head, model_of
from .base import StoreBase
from .protocols import DEFAULT_TTL
from .redis_check import check_namespace, scan_batches
from .redis_format import (
    Bucket,
    encode_score,
    expiry_bucket_field,
    live_entries,
    live_entry,
    parse_counters,
    text,
)
from .stats import CacheStats, CheckReport, build_stats

__all__ = ["GLOB_SPECIAL", "RedisAdmin"]

GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisAdmin(StoreBase):
    """Key names and maintenance of a Redis store.

    :class:`~rerank_cache.stores.redis.RedisScoreCache` sets the attributes below when it
    is created.
    """

    _client: Any
    _url: str
    _namespace: str
    _score_prefix: str
    _counters_key: str
    _entries_key: str
    _generation_key: str
    _ttl_ms: int | None
    _stale_ms: int | None
    #: Whether writes run in MULTI/EXEC and a pipeline may MGET (not on a cluster).
    _transaction: bool

    @property
    def location(self) -> str:
        """Where the scores live, for messages: the URL without its password, and namespace."""
        sep = "&" if urlsplit(self._url).query else "?"
        return f"{self._url}{sep}namespace={self._namespace}"

    @property
    def namespace(self) -> str:
        """The key prefix of this application's scores and counters."""
        return self._namespace

    def _score_key(self, key: str) -> str:
        return self._score_prefix + key

    def _store_key(self, name: str) -> str | None:
        """The store key a Redis key name of our scores holds, or None if it is not one."""
        return name[len(self._score_prefix) :] if name.startswith(self._score_prefix) else None

    def _score_pattern(self, model: str | None) -> str:
        """A ``SCAN`` pattern matching every score key of ``model`` (None: every model)."""
        if model is None:
            return self._score_prefix + "*"
        escaped = GLOB_SPECIAL.sub(r"\\\1", model)
        return self._score_prefix + key_head(escaped) + "?" * HASH_DIGITS

    def _meta_key(self, name: str) -> str:
        """The Redis key of a namespace-wide structure (counters, entry buckets)."""
        return f"{self._namespace}:{name}"

    def _mget(self, names: list[str]) -> list[Any]:
        return list(self._client.mget(names))

    def _stats_replies(self) -> tuple[Any, Any, int]:
        """The raw counters and entries hashes, and the bytes Redis uses; may raise."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(self._counters_key)
        pipe.hgetall(self._entries_key)
        pipe.info("memory")
        counters_raw, entries_raw, memory = pipe.execute(raise_on_error=False)
        for result in (counters_raw, entries_raw):
            if isinstance(result, Exception):
                raise result
        return (
            counters_raw,
            entries_raw,
            (0 if isinstance(memory, Exception) else int(memory.get("used_memory", 0))),
        )

    @contextlib.contextmanager
    def _raising(self) -> Iterator[None]:
        """Turn storage trouble into a :class:`CacheError` that says what to check (the
        maintenance methods raise where the request path fails open)."""
        try:
            yield
        except self._failures as exc:
            raise CacheError(
                f"cannot use Redis at {self.location} ({self._describe(exc)}). Check that "
                "redis-server is running and reachable, and the URL."
            ) from None

    def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            CacheError: Redis cannot be reached or refused the connection (the message
                names the location, never the password).
        """
        with self._raising():
            self._client.ping()
        self._reachable()

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
        with self._raising():
            counters_raw, entries_raw, size = self._stats_replies()
        now_ms = int(time.time() * 1000)
        counters = parse_counters(counters_raw)
        for model, deltas in self._pending_here().items():
            counters.setdefault(model, Counter()).update(deltas)
        entries, oldest, newest = live_entries(entries_raw, now_ms)
        return _build_stats(self.location, counters, entries, size, now_ms, oldest, newest)

    def clear(self, model: str | None = None) -> int:
        """Delete every score of this namespace, or only ``model``'s; return how many.

        Counters are kept (they describe history, not contents).

        Raises:
            CacheError: Redis cannot be reached.
        """
        deleted = 0
        with self._raising():
            try:
                for batch in scan_batches(self._client, self._score_pattern(model)):
                    deleted += int(self._client.unlink(*batch))
                if model is None:
                    self._client.delete(self._entries_key)
                else:
                    fields = [
                        field
                        for field in self._client.hkeys(self._entries_key)
                        if (b := Bucket.parse(field)) is not None and b.model == model
                    ]
                    if fields:
                        self._client.hdel(self._entries_key, *fields)
                # After the deletes: whoever reads the new generation reads no old score.
                self._client.incr(self._generation_key)
            finally:
                self._cleared()
        return deleted

    def iter_live(self, model: str | None = None) -> Iterator[tuple[str, float, float | None]]:
        """Every live score (only ``model``'s, if given) as ``(key, score, expires_at)``
        (epoch seconds; None: never), a ``SCAN`` batch at a time: flat memory at any size.

        Raises:
            CacheError: Redis cannot be reached.
        """
        with self._raising():
            for batch in scan_batches(self._client, self._score_pattern(model)):
                pipe = self._client.pipeline(transaction=False)
                for name in batch:
                    pipe.get(name)
                    pipe.pttl(name)
                replies = pipe.execute(raise_on_error=False)
                now = time.time()
                for name, raw, pttl in zip(batch, replies[::2], replies[1::2], strict=True):
                    entry = live_entry(raw, pttl, now)
                    key = self._store_key(text(name))
                    if entry is None or key is None:
                        continue  # unsafe (check reports it), or expired meanwhile
                    yield key, entry[0], entry[1]

    def put_expiring(self, rows: Iterable[tuple[str, float, float | None]]) -> int:
        """Store ``(key, score, expires_at)`` rows, each keeping its own expiry (an import);
        return how many. Rows already expired are the caller's to skip.

        Raises:
            CacheError: Redis cannot be reached.
        """
        now_ms = int(time.time() * 1000)
        width_ttl = self._ttl_ms or int(DEFAULT_TTL.total_seconds() * 1000)
        fields: list[str] = []
        with self._raising():
            pipe = self._client.pipeline(transaction=self._transaction)
            for key, value, expires in rows:
                expire_ms = None if expires is None else math.ceil(expires * 1000)
                px = None if expire_ms is None else max(1, expire_ms - now_ms)
                kept = self._stale_ms is not None and px is not None
                if kept:  # kept past its expiry for on_error="stale", as put_many does
                    px = (px or 0) + (self._stale_ms or 0)
                stored = encode_score(float(value), expire_ms if kept else None)
                pipe.set(self._score_key(key), stored, px=px, get=True)
                fields.append(expiry_bucket_field(model_of(key) or "", expire_ms, width_ttl))
            previous = pipe.execute() if fields else []
            # Keys that were live already are counted where they were first written.
            new = Counter(f for f, old in zip(fields, previous, strict=True) if old is None)
            if new:
                counts = self._client.pipeline(transaction=self._transaction)
                for field, n in new.items():
                    counts.hincrby(self._entries_key, field, n)
                counts.execute()
        return len(fields)

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
        with self._raising():
            return check_namespace(
                self._client,
                pattern=self._score_pattern(None),
                store_key=self._store_key,
                mget=self._mget,
                counters_key=self._counters_key,
                entries_key=self._entries_key,
                ttl_ms=self._ttl_ms,
                transaction=self._transaction,
                fix=fix,
            )


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
