"""What a score store is: the contracts every store meets, and the values they share.

* :class:`ScoreStore`: what the caching layer needs on the request path; never raises for
  storage trouble. :class:`AdminStore` adds what the ``rerank-cache`` command needs.
* :data:`Purpose`: who looked pairs up or stored scores (an application, or warming).
* The TTL argument both stores take (:data:`DEFAULT_TTL`, :data:`TTL_UNSET`,
  :func:`ttl_seconds`), :func:`finite_scores` (the one rule of what is worth storing) and
  :data:`REDIS_SCHEMES`.

A leaf: it imports no store, no diskcache and no redis, so whatever uses a store can name
its type without loading one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from .stats import CacheStats, CheckReport

__all__ = [
    "DEFAULT_TTL",
    "REDIS_SCHEMES",
    "TTL_UNSET",
    "AdminStore",
    "Purpose",
    "ScoreStore",
    "finite_scores",
    "ttl_seconds",
]

#: Default time to live of a cached score: 30 days. Scores of a model version do not
#: change, but DashScope can update a model behind the same name; a month bounds the drift.
DEFAULT_TTL = timedelta(days=30)
#: The default of a store's ``ttl`` argument (``None`` means "never expire", so not None).
TTL_UNSET: Any = object()
#: URL schemes that name a Redis store: ``open`` picks the backend by them, and the Redis
#: store refuses other URLs. Here, and not in either, so neither imports the other.
REDIS_SCHEMES = ("redis", "rediss", "unix")

#: Who looked pairs up or stored scores: an application (``"app"``: ``rerank``, ``arerank``,
#: ``score_texts``) or a warming run (``"warm"``). Warming is counted apart, so hits, misses
#: and the savings they imply describe the applications only.
Purpose = Literal["app", "warm"]


def ttl_seconds(ttl: float | timedelta | None, *, name: str = "ttl") -> float | None:
    """Return a ``ttl`` argument as seconds (None: never expire).

    Raises:
        ValueError: not seconds, a ``timedelta`` or None; or not positive.

    Example:
        >>> ttl_seconds(timedelta(hours=1)), ttl_seconds(None)
        (3600.0, None)
    """
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"{name} must be seconds, a timedelta or None, not {ttl!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be positive, got {ttl!r}")
    return float(seconds)


def finite_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """The scores worth storing: finite numbers (not bools), as floats. Pure."""
    return {
        key: float(value)
        for key, value in scores.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


@runtime_checkable
class ScoreStore(Protocol):
    """A store of scores by key, as the caching layer uses it.

    :class:`~rerank_cache.ScoreCache` (diskcache) and
    :class:`~rerank_cache.stores.redis.RedisScoreCache` implement it (and
    :class:`AdminStore`). Implementations never raise for storage trouble on the request
    path (``get_many``, ``put_many``, ``record_*``): they fail open, log and count.
    """

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Batched lookup; absent keys are misses. Never raises for storage trouble."""

    def put_many(
        self,
        scores: Mapping[str, float],
        *,
        model: str,
        api_requests: int = 0,
        documents_sent: int = 0,
        tokens_billed: int = 0,
        purpose: Purpose = "app",
    ) -> bool:
        """Store scores and usage in one transaction; False when it failed open."""

    def get_stale_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Scores of ``keys`` that are live or past their ttl by less than the store's
        ``stale_ttl`` (none without one). For ``on_error="stale"``; never raises."""

    def record_lookup(
        self, model: str, *, hits: int, misses: int, purpose: Purpose = "app"
    ) -> None:
        """Count pairs looked up (by an application, or by warming).

        Called on the event loop by ``arerank``/``ascore_texts``: it must not wait for I/O
        (the built-in stores keep the counts in memory and write them later).
        """

    def record_stale(self, model: str, served: int) -> None:
        """Count scores served stale because DashScope failed."""

    def record_fallback(self, model: str) -> None:
        """Count a rerank that fell back to retrieval order."""

    def stats(self) -> CacheStats:
        """Entries, hits, misses, usage and a per-model breakdown."""

    def close(self) -> None:
        """Flush counters and release connections (for whoever owns the store)."""


@runtime_checkable
class AdminStore(ScoreStore, Protocol):
    """A :class:`ScoreStore` that can be maintained: what the ``rerank-cache`` command uses."""

    def clear(self, model: str | None = None) -> int:
        """Delete every score, or one model's; return how many."""

    def expire(self, now: float | None = None, *, model: str | None = None) -> int:
        """Delete expired scores; return how many."""

    def count(self, *, model: str | None = None, expired: bool = False) -> int:
        """Count live (or expired) scores."""

    def check(self, *, fix: bool = False) -> CheckReport:
        """Check integrity; with ``fix``, repair what can be repaired."""

    def flush_stats(self) -> None:
        """Write counters kept in memory now (fails open)."""

    def iter_live(self, model: str | None = None) -> Iterator[tuple[str, float, float | None]]:
        """Every live score as ``(key, score, expires_at)``, in chunks (an export)."""

    def put_expiring(self, rows: Iterable[tuple[str, float, float | None]]) -> int:
        """Store rows each keeping its own expiry (an import); return how many."""

    def __enter__(self) -> AdminStore:
        """Use the store as a context manager; it closes on exit."""

    def __exit__(self, *exc_info: object) -> Any:
        """Close the store."""
