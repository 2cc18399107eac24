"""The seams where the parts meet: something that scores, and something that stores scores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from .store import CacheStats, CheckReport

__all__ = ["ScoreStore"]


@runtime_checkable
class ScoreStore(Protocol):
    """A store of scores by key: :class:`ScoreCache` (diskcache) implements it.

    :class:`CachedReRanker` needs only the first five members; the CLI uses the rest.
    Implementations never raise for storage trouble on the request path (``get_many``,
    ``put_many``, ``record_*``): they fail open, log and count.
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
    ) -> bool:
        """Store scores and usage in one transaction; False when it failed open."""

    def record_lookup(self, model: str, *, hits: int, misses: int) -> None:
        """Count pairs looked up."""

    def record_fallback(self, model: str) -> None:
        """Count a rerank that fell back to retrieval order."""

    def stats(self) -> CacheStats:
        """Entries, hits, misses, usage and a per-model breakdown."""

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

    def close(self) -> None:
        """Flush counters and release connections."""

    def __enter__(self) -> ScoreStore:
        """Use the store as a context manager; it closes on exit."""

    def __exit__(self, *exc_info: object) -> Any:
        """Close the store."""
