"""The seams where the parts meet: something that scores, and something that stores scores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .client import BatchResult, ScoreResult
from .planning import Collected
from .stores.base import ScoreStore

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
