"""What a DashScope request returns: one request's scores, one call's scores, usage totals.

A leaf: plain frozen dataclasses that import nothing from the package, so protocols and the
caching layer can name these types without pulling in the client or the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchResult", "ScoreResult", "UsageTotals"]


@dataclass(frozen=True)
class BatchResult:
    """One successful DashScope request.

    Attributes:
        texts: the documents sent, in request order.
        scores: the relevance score of each text, in the same order.
        total_tokens: ``usage.total_tokens`` as billed.
        request_id: DashScope's request id.
        attempts: how many attempts the request took.
    """

    texts: tuple[str, ...]
    scores: tuple[float, ...]
    total_tokens: int
    request_id: str | None
    attempts: int


@dataclass(frozen=True)
class ScoreResult:
    """The outcome of scoring a set of texts against one query.

    Attributes:
        scores: relevance score per text.
        batches: the requests that produced them, in the order they completed.
    """

    scores: dict[str, float]
    batches: tuple[BatchResult, ...]

    @property
    def total_tokens(self) -> int:
        """Tokens billed across the requests."""
        return sum(b.total_tokens for b in self.batches)

    @property
    def request_ids(self) -> tuple[str, ...]:
        """DashScope request ids of the requests."""
        return tuple(b.request_id for b in self.batches if b.request_id)


@dataclass(frozen=True)
class UsageTotals:
    """Cumulative usage of one client (a snapshot).

    Attributes:
        requests: successful requests.
        documents: documents in successful requests.
        total_tokens: tokens billed.
        retries: attempts beyond the first, in requests that succeeded.
        failures: requests that ended in an error.
        fallbacks: reranks that returned retrieval order after a failure
            (``on_error="fallback"``).
    """

    requests: int = 0
    documents: int = 0
    total_tokens: int = 0
    retries: int = 0
    failures: int = 0
    fallbacks: int = 0
