"""The seams where the parts meet: something that scores, and something that stores scores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .client.results import BatchResult, ScoreResult
from .planning import Collected
from .singleflight import SingleFlight
from .store import CacheStats, CheckReport

__all__ = ["ScoreStore", "Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """A reranker the caching layer can wrap: :class:`QwenReRanker`, or another wrapper."""

    @property
    def query(self) -> str:
        """The query documents are scored against."""

    @property
    def topn(self) -> int:
        """Default number of documents returned."""

    @property
    def rerank_field(self) -> str:
        """The document field whose text is scored."""

    @property
    def model(self) -> str:
        """The rerank model (part of the cache key)."""

    @property
    def instruct(self) -> str | None:
        """The task instruction (part of the cache key)."""

    def with_query(self, query: str) -> Scorer:
        """A copy for another query sharing everything else."""

    def prepare(self, query_results: Any) -> Collected[Any]:
        """Deduplicate documents and compute the exact texts to send."""

    def score_texts(
        self,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> ScoreResult:
        """Score prepared unique texts against :attr:`query`."""

    async def ascore_texts(
        self,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], Awaitable[None]] | None = None,
    ) -> ScoreResult:
        """The asyncio twin of :meth:`score_texts`."""


@runtime_checkable
class ScoreStore(Protocol):
    """A store of scores by key: :class:`ScoreCache` (diskcache) implements it.

    :class:`CachedReRanker` needs only the first five members; the CLI uses the rest.
    Implementations never raise for storage trouble on the request path (``get_many``,
    ``put_many``, ``record_*``): they fail open, log and count.
    """

    #: Keys being fetched right now by threads and tasks of this process.
    flights: SingleFlight

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
