"""``QwenReRanker``: a drop-in for ``zvec.extension.QwenReRanker``, correct at the edges.

Same constructor and ``rerank()`` as zvec's (both the older dict form and zvec 0.8.0's list
form), but every document is scored (DashScope's ``top_n`` never truncates what comes back),
requests stay within the model's document and token limits and run concurrently, throttling
and server errors are retried, token usage is recorded, and the API key is passed per call
instead of being written into the SDK's globals.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

from .base import DEFAULT_MODEL, OnError, RerankMethods, check_on_error, check_query, check_topn
from .cached import CachedReRanker
from .client.core import DEFAULT_BASE_URL, DEFAULT_MAX_CONCURRENCY, DashScopeClient
from .client.results import BatchResult, ScoreResult, UsageTotals
from .client.retry import RetryPolicy
from .errors import ConfigurationError
from .planning import Collected, ModelLimits, collect, limits_for
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .stores.protocols import ScoreStore

#: "Not passed": None is a value some of these arguments take.
_UNSET: Any = object()

#: The two positional orders zvec has had, after ``query``.
_OLDER_ORDER = ("topn", "rerank_field", "model", "api_key")
_ZVEC_08_ORDER = ("rerank_field", "model", "api_key")


def _by_name(positional: tuple[Any, ...], **keywords: Any) -> dict[str, Any]:
    """Name the constructor's positional arguments after ``query``; drop the unset ones.

    A string second argument means zvec 0.8.0's order ``(query, rerank_field, model,
    api_key)``, else it is older zvec's ``(query, topn, rerank_field, model, api_key)``. The
    values themselves are never guessed at, so any model name works in either order; what
    is refused is a call that gives one argument twice (by position and by keyword), since
    then the order it meant cannot be known.
    """
    order = _ZVEC_08_ORDER if positional and isinstance(positional[0], str) else _OLDER_ORDER
    if len(positional) > len(order):
        raise TypeError(
            f"QwenReRanker takes at most {len(order) + 1} positional arguments "
            f"(query, {', '.join(order)}), got {len(positional) + 1}; pass the rest as keywords"
        )
    given = {name: value for name, value in keywords.items() if value is not _UNSET}
    for name, value in zip(order, positional, strict=False):
        if name in given:
            which = "zvec 0.8.0's" if order is _ZVEC_08_ORDER else "older zvec's"
            # Values are named, never shown: one of them may be the API key.
            raise ConfigurationError(
                f"{name} given twice: by position (argument {order.index(name) + 2} in "
                f"{which} order: query, {', '.join(order)}) and by keyword; pass it once, "
                "preferably everything after query as keywords"
            )
        given[name] = value
    return given


def _header_safe(key: str) -> str:
    """Return ``key`` if it can be sent in an HTTP header, else raise (never showing it)."""
    bad = next((i for i, c in enumerate(key) if not "!" <= c <= "~"), None)
    if bad is not None:
        what = "whitespace" if key[bad].isspace() else "a non-ASCII or control character"
        raise ConfigurationError(
            f"the DashScope API key contains {what} at position {bad + 1} of {len(key)}, "
            "so it cannot be sent in an HTTP header; copy the key again from the DashScope "
            "console (argument or DASHSCOPE_API_KEY)"
        )
    return key


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
            documents in retrieval order with their original scores; ``"stale"`` is for a
            :class:`CachedReRanker` (it serves scores kept past their ttl) and, on a
            reranker without a cache, behaves as ``"raise"``.

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

    @overload
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
    ) -> None: ...

    @overload
    def __init__(
        self,
        query: str | None,
        rerank_field: str,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        *,
        topn: int = 10,
        instruct: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_rpm: float | RateLimiter | None = None,
        limits: ModelLimits | None = None,
        on_error: OnError = "raise",
    ) -> None: ...

    def __init__(
        self,
        query: str | None = None,
        *positional: Any,
        topn: Any = _UNSET,
        rerank_field: Any = _UNSET,
        model: Any = _UNSET,
        api_key: Any = _UNSET,
        instruct: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_rpm: float | RateLimiter | None = None,
        limits: ModelLimits | None = None,
        on_error: OnError = "raise",
    ) -> None:
        given = _by_name(
            positional, topn=topn, rerank_field=rerank_field, model=model, api_key=api_key
        )
        topn = given.get("topn", 10)
        rerank_field = given.get("rerank_field")
        model = given.get("model", DEFAULT_MODEL)
        api_key = given.get("api_key")
        self._query = check_query(query)
        # Checked before the other arguments, as zvec does, so code that expects zvec's
        # error for QwenReRanker(query=...) without a key gets it.
        key = api_key if api_key is not None else os.environ.get("DASHSCOPE_API_KEY")
        if not isinstance(key, str) or not key.strip():
            raise ConfigurationError(
                "DashScope API key is required: pass api_key= or set DASHSCOPE_API_KEY"
            )
        key = _header_safe(key.strip())
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
        url = base_url or os.environ.get("DASHSCOPE_HTTP_BASE_URL") or DEFAULT_BASE_URL
        self._client = DashScopeClient(
            api_key=key,
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
        new._query = check_query(query)
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
        """The DashScope API base address (any password in it shown as ``***``)."""
        return self._client.base_url

    @property
    def scorer_id(self) -> str:
        """Who scores: ``"dashscope"`` for DashScope's own endpoints, else a hash of
        :attr:`base_url` (part of every cache key, so a test server never answers for
        DashScope)."""
        return self._client.scorer_id

    @property
    def limits(self) -> ModelLimits:
        """The request limits used to split work into requests."""
        return self._client.limits

    @property
    def on_error(self) -> OnError:
        """What :meth:`rerank` does when DashScope fails: ``"raise"``, ``"fallback"`` or
        ``"stale"`` (here the same as ``"raise"``: there is no cache to serve from)."""
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

    def close(self) -> None:
        """Stop the request threads and close the connections this reranker keeps between
        calls (shared with its :meth:`with_query` copies). Also done when it is garbage
        collected. It stays usable: a later call starts them again."""
        self._client.close()

    def __enter__(self) -> QwenReRanker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        return await self._client.ascore(self._query, texts, on_batch=on_batch)

    def _count_fallback(self) -> None:
        self._client.count_fallback()
