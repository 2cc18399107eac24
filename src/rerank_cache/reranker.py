"""``QwenReRanker``: a drop-in for ``zvec.extension.QwenReRanker``, correct at the edges.

Same constructor and ``rerank()`` as zvec's (both the older dict form and zvec 0.8.0's list
form), but every document is scored (DashScope's ``top_n`` never truncates what comes back),
requests stay within the model's document and token limits and run concurrently, throttling
and server errors are retried, token usage is recorded, and the API key is passed per call
instead of being written into the SDK's globals.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .client import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONCURRENCY,
    BatchResult,
    DashScopeClient,
    RetryPolicy,
    ScoreResult,
    UsageTotals,
)
from .errors import ConfigurationError, DashScopeError, NoDocumentsError
from .planning import MODEL_LIMITS, Collected, ModelLimits, assemble, collect, limits_for
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .cached import CachedReRanker
    from .stores.base import ScoreStore

logger = logging.getLogger("rerank_cache")

#: What a reranker does when DashScope fails after retries.
OnError = Literal["raise", "fallback"]

__all__ = [
    "DEFAULT_MODEL",
    "OnError",
    "QwenReRanker",
    "RerankMethods",
    "check_on_error",
    "check_topn",
    "nothing_to_score",
]

#: The model zvec and the SDK default to.
DEFAULT_MODEL = "gte-rerank-v2"


def check_topn(topn: Any) -> int:
    """Return ``topn`` if it is a positive int, else raise :class:`ConfigurationError`."""
    if isinstance(topn, bool) or not isinstance(topn, int):
        raise ConfigurationError(f"topn must be a positive integer, not {topn!r}")
    if topn < 1:
        raise ConfigurationError(f"topn must be at least 1, got {topn}")
    return topn


def _check_query(query: Any) -> str:
    if query is None or not isinstance(query, str) or not query.strip():
        raise ConfigurationError("Query is required for QwenReRanker: a non-empty string")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            "The query contains characters UTF-8 cannot encode (lone surrogates)"
        ) from None
    return query


class _Host(Protocol):
    """What :class:`RerankMethods` needs from the class it is mixed into."""

    @property
    def topn(self) -> int: ...

    @property
    def rerank_field(self) -> str: ...

    @property
    def on_error(self) -> OnError: ...

    def prepare(self, query_results: Any) -> Collected[Any]: ...

    def score_texts(self, texts: Sequence[str]) -> ScoreResult: ...

    async def ascore_texts(self, texts: Sequence[str]) -> ScoreResult: ...

    def _count_fallback(self) -> None: ...


class RerankMethods:
    """``rerank()`` and ``arerank()``, written once on top of ``prepare()`` and
    ``score_texts()``; shared by :class:`QwenReRanker` and :class:`CachedReRanker`."""

    def rerank(
        self: _Host,
        query_results: Any,
        topn: int | None = None,
        *,
        fields: Any = None,
    ) -> list[Any]:
        """Rerank documents by their relevance to the query.

        Args:
            query_results: ``dict[str, list[Doc]]`` (older zvec) or ``list[list[Doc]]``
                (zvec 0.8.0); zvec ``Doc`` or :class:`rerank_cache.Doc`.
            topn: how many documents to return; defaults to the reranker's ``topn``.
            fields: accepted for zvec 0.8.0 compatibility and ignored.

        Returns:
            Up to ``topn`` documents of the caller's own type, best first (ties keep input
            order), each with ``score`` set to DashScope's relevance score. An empty input
            gives ``[]``.

        Raises:
            NoDocumentsError: (a ``ValueError``, as zvec raises) documents were given but
                none has text in the rerank field.
            ValueError: ``topn`` is not a positive integer.
            DashScopeError: DashScope failed after retries (unless ``on_error="fallback"``,
                which returns the documents in retrieval order instead).
        """
        del fields
        limit = self.topn if topn is None else check_topn(topn)
        collected = self.prepare(query_results)
        if not collected.candidates:
            return nothing_to_score(collected, self.rerank_field)
        try:
            result = self.score_texts(collected.texts)
        except DashScopeError as exc:
            return _fall_back(self, exc, collected, limit)
        return assemble(collected.candidates, result.scores, limit)

    async def arerank(
        self: _Host,
        query_results: Any,
        topn: int | None = None,
        *,
        fields: Any = None,
    ) -> list[Any]:
        """The asyncio twin of :meth:`rerank`: same inputs, results and errors.

        Requests go through ``dashscope.AioTextReRank`` with the same batching, concurrency
        and retries; the event loop is never blocked.
        """
        del fields
        limit = self.topn if topn is None else check_topn(topn)
        if _document_count(query_results) > _PREPARE_IN_THREAD:
            # Reading, cleaning and trimming thousands of texts is CPU work: off the loop.
            collected = await asyncio.to_thread(self.prepare, query_results)
        else:
            collected = self.prepare(query_results)
        if not collected.candidates:
            return nothing_to_score(collected, self.rerank_field)
        try:
            result = await self.ascore_texts(collected.texts)
        except DashScopeError as exc:
            return _fall_back(self, exc, collected, limit)
        return assemble(collected.candidates, result.scores, limit)


#: Above this many documents, ``arerank`` prepares them in a worker thread.
_PREPARE_IN_THREAD = 200


def _document_count(query_results: Any) -> int:
    """How many documents the input holds, without reading them (0 if it is odd)."""
    lists = query_results.values() if isinstance(query_results, Mapping) else query_results
    try:
        return sum(len(docs) for docs in lists if docs is not None)
    except TypeError:
        return 0  # not a list of lists: prepare() raises the clear error


def _fall_back(
    host: _Host, exc: DashScopeError, collected: Collected[Any], limit: int
) -> list[Any]:
    """With ``on_error="fallback"``: retrieval order, original scores, logged and counted."""
    if host.on_error != "fallback":
        raise exc
    logger.warning(
        "rerank-cache: DashScope failed (%s); returning %d documents in retrieval order "
        "with their original scores (on_error='fallback')",
        exc,
        min(limit, len(collected.candidates)),
    )
    host._count_fallback()
    return [candidate.doc for candidate in collected.candidates[:limit]]


class QwenReRanker(RerankMethods):
    """Rerank retrieved documents with DashScope TextReRank.

    Accepts zvec's older positional order ``(query, topn, rerank_field, model, api_key)`` and,
    when the second argument is a string, zvec 0.8.0's ``(query, rerank_field, model,
    api_key)``. Everything else is keyword-only.

    Args:
        query: the query the documents are scored against (required, non-empty).
        topn: how many documents :meth:`rerank` returns by default.
        rerank_field: the document field whose text is scored (required).
        model: the DashScope rerank model.
        api_key: the DashScope API key; defaults to ``DASHSCOPE_API_KEY``.
        instruct: a task instruction for models that take one (``qwen3-rerank`` and later).
        base_url: the API base address; defaults to ``DASHSCOPE_HTTP_BASE_URL`` (read now,
            not at import), else DashScope's Beijing endpoint.
        timeout: seconds to wait for one HTTP response.
        retry: how failed requests are retried (see :class:`RetryPolicy`).
        max_concurrency: requests in flight at once for one rerank.
        max_rpm: if set, at most this many requests start per minute (shared by
            :meth:`with_query` copies); retries count too. Pass a :class:`RateLimiter`
            to share one limit between rerankers.
        limits: request limits; defaults to the documented limits of ``model``.
        on_error: ``"raise"`` (default) raises :class:`DashScopeError` when DashScope fails
            after retries; ``"fallback"`` logs a warning, counts it, and returns the
            documents in retrieval order with their original scores.

    Raises:
        ValueError: (a :class:`ConfigurationError`) when the query is empty or None,
            ``rerank_field`` is None, ``topn`` is not a positive integer, or no API key is
            available.

    Example:
        >>> reranker = QwenReRanker(query="vector database", rerank_field="content",
        ...                         api_key="sk-...")
        >>> reranker.model, reranker.topn
        ('gte-rerank-v2', 10)
    """

    def __init__(
        self,
        query: str | None = None,
        topn: int = 10,
        rerank_field: str | None = None,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        *,
        instruct: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_rpm: float | RateLimiter | None = None,
        limits: ModelLimits | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if isinstance(topn, str):
            # zvec 0.8.0 positional order: (query, rerank_field, model, api_key).
            if rerank_field is not None and rerank_field not in MODEL_LIMITS:
                raise ConfigurationError(
                    f"topn must be an integer, not {topn!r}. In zvec 0.8.0's positional "
                    "order (query, rerank_field, model, api_key) the third argument must be "
                    f"a known model name, not {rerank_field!r}; pass rerank_field= and "
                    "model= as keywords instead"
                )
            shifted_model = rerank_field if rerank_field is not None else model
            if rerank_field is not None and model != DEFAULT_MODEL and api_key is None:
                api_key = model
            topn, rerank_field, model = 10, topn, shifted_model
        self._query = _check_query(query)
        self._topn = check_topn(topn)
        self._on_error = check_on_error(on_error)
        if rerank_field is None or not isinstance(rerank_field, str) or not rerank_field:
            raise ConfigurationError(
                "rerank_field is required: the name of the document field to score"
            )
        self._rerank_field = rerank_field
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("model must be a non-empty string")
        if instruct is not None and (not isinstance(instruct, str) or not instruct.strip()):
            raise ConfigurationError("instruct must be a non-empty string or None")
        key = api_key if api_key is not None else os.environ.get("DASHSCOPE_API_KEY")
        if not key or not key.strip():
            raise ConfigurationError("No DashScope API key: pass api_key= or set DASHSCOPE_API_KEY")
        url = base_url or os.environ.get("DASHSCOPE_HTTP_BASE_URL") or DEFAULT_BASE_URL
        self._client = DashScopeClient(
            api_key=key.strip(),
            model=model,
            base_url=url,
            limits=limits or limits_for(model),
            instruct=instruct,
            timeout=timeout,
            retry=retry,
            max_concurrency=max_concurrency,
            rate_limiter=(
                max_rpm
                if isinstance(max_rpm, RateLimiter) or max_rpm is None
                else RateLimiter(max_rpm)
            ),
        )

    @classmethod
    def _from_client(
        cls, client: DashScopeClient, query: str, topn: int, rerank_field: str, on_error: OnError
    ) -> QwenReRanker:
        new = cls.__new__(cls)
        new._on_error = on_error
        new._query = _check_query(query)
        new._topn = check_topn(topn)
        new._rerank_field = rerank_field
        new._client = client
        return new

    # -- properties ----------------------------------------------------------------------

    @property
    def query(self) -> str:
        """The query documents are scored against."""
        return self._query

    @property
    def topn(self) -> int:
        """How many documents :meth:`rerank` returns unless told otherwise."""
        return self._topn

    @property
    def rerank_field(self) -> str:
        """The document field whose text is scored."""
        return self._rerank_field

    @property
    def model(self) -> str:
        """The DashScope rerank model."""
        return self._client.model

    @property
    def instruct(self) -> str | None:
        """The task instruction sent with each request, if any."""
        return self._client.instruct

    @property
    def base_url(self) -> str:
        """The DashScope API base address."""
        return self._client.base_url

    @property
    def limits(self) -> ModelLimits:
        """The request limits used to split work into requests."""
        return self._client.limits

    @property
    def on_error(self) -> OnError:
        """What :meth:`rerank` does when DashScope fails: ``"raise"`` or ``"fallback"``."""
        return self._on_error

    @property
    def usage(self) -> UsageTotals:
        """Cumulative DashScope usage of this reranker and its :meth:`with_query` copies."""
        return self._client.usage

    def __repr__(self) -> str:
        return (
            f"QwenReRanker(query={self._query!r}, topn={self._topn}, "
            f"rerank_field={self._rerank_field!r}, model={self.model!r}, api_key='***')"
        )

    def with_query(self, query: str) -> QwenReRanker:
        """Return a copy for another query, sharing the client (key, settings, usage)."""
        return QwenReRanker._from_client(
            self._client, query, self._topn, self._rerank_field, self._on_error
        )

    def cached(self, cache: ScoreStore | None = None) -> CachedReRanker:
        """Return this reranker with the score cache in front: ``QwenReRanker(...).cached()``.

        Args:
            cache: the store to use; by default the one ``RERANK_CACHE_URL`` names (a Redis
                URL or a directory), else a :class:`ScoreCache` in the default directory
                (``RERANK_CACHE_DIR`` or ``~/.cache/rerank-cache``).
        """
        from .cached import CachedReRanker
        from .stores.disk import ScoreCache

        if cache is None:
            url = os.environ.get("RERANK_CACHE_URL", "").strip()
            cache = ScoreCache.from_url(url) if url else ScoreCache()
        return CachedReRanker(self, cache)

    # -- the three steps -------------------------------------------------------------------

    def prepare(self, query_results: Any) -> Collected[Any]:
        """Deduplicate the documents and compute the exact texts to send (no I/O)."""
        return collect(query_results, self._rerank_field, self._client.limits)

    def score_texts(
        self,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> ScoreResult:
        """Score prepared, unique texts against :attr:`query` through DashScope.

        ``on_batch`` runs in the calling thread after each successful request, so partial
        progress can be kept when a later request fails.
        """
        return self._client.score(self._query, texts, on_batch=on_batch)

    async def ascore_texts(
        self,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], Awaitable[None]] | None = None,
    ) -> ScoreResult:
        """The asyncio twin of :meth:`score_texts`, through ``dashscope.AioTextReRank``."""
        return await self._client.score_async(self._query, texts, on_batch=on_batch)

    def _count_fallback(self) -> None:
        self._client.count_fallback()


def check_on_error(on_error: Any) -> OnError:
    """Return ``on_error`` if it is ``"raise"`` or ``"fallback"``, else raise."""
    if on_error not in ("raise", "fallback"):
        raise ConfigurationError(f"on_error must be 'raise' or 'fallback', not {on_error!r}")
    return on_error  # type: ignore[no-any-return]


def nothing_to_score(collected: Collected[Any], rerank_field: str) -> list[Any]:
    """Empty input gives ``[]``; documents without any text raise, as zvec does."""
    if collected.seen == 0:
        return []
    raise NoDocumentsError(
        f"No documents to rerank: none of the {collected.seen} documents has text in "
        f"field {rerank_field!r}"
    )
