"""What every reranker shares: the ``Scorer`` seam, ``rerank()``/``arerank()``, argument checks.

A reranker here is anything with ``prepare()`` (documents to the exact texts to score) and
``score_texts()``/``ascore_texts()`` (texts to scores). :class:`RerankMethods` turns those into
zvec's ``rerank()`` once, for :class:`~rerank_cache.QwenReRanker` and
:class:`~rerank_cache.CachedReRanker` alike, so a caching layer wraps a reranker through the very
interface it offers (and layers stack).

This module sits below both rerankers and imports nothing concrete: results, planning and
errors only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .client.results import BatchResult, ScoreResult
from .errors import ConfigurationError, DashScopeError, NoDocumentsError
from .planning import Collected, assemble

if TYPE_CHECKING:
    # For type checkers both rerankers subclass zvec's RerankFunction, so they pass as
    # Collection.query(reranker=...). At run time the base is object and the relation is an
    # ABC registration (see _watch_for_zvec): importing zvec costs 0.2 s, and the CLI and
    # zvec-less installs should not pay it.
    from zvec.extension import RerankFunction as _ZvecRerankFunction
else:
    _ZvecRerankFunction = object

__all__ = [
    "DEFAULT_MODEL",
    "OnError",
    "RerankMethods",
    "Scorer",
    "check_on_error",
    "check_query",
    "check_topn",
    "nothing_to_score",
]

logger = logging.getLogger("rerank_cache")

#: What a reranker does when DashScope fails after retries.
OnError = Literal["raise", "fallback", "stale"]
_ON_ERROR = ("raise", "fallback", "stale")

#: The model zvec and the SDK default to.
DEFAULT_MODEL = "gte-rerank-v2"

#: Above this many documents, ``arerank`` prepares them in a worker thread.
_PREPARE_IN_THREAD = 200


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

    @property
    def scorer_id(self) -> str:
        """Who scores (part of the cache key; see :func:`rerank_cache.keys.scorer_id`)."""

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


class _Host(Protocol):
    """What :class:`RerankMethods` needs from the class it is mixed into."""

    @property
    def topn(self) -> int: ...

    @property
    def rerank_field(self) -> str: ...

    @property
    def on_error(self) -> OnError: ...

    def prepare(self, query_results: Any) -> Collected[Any]: ...

    async def _aprepare(self, query_results: Any) -> Collected[Any]: ...

    def score_texts(self, texts: Sequence[str]) -> ScoreResult: ...

    async def ascore_texts(self, texts: Sequence[str]) -> ScoreResult: ...

    def _fall_back(
        self, exc: DashScopeError, collected: Collected[Any], limit: int
    ) -> list[Any]: ...

    def _count_fallback(self) -> None: ...


class RerankMethods(_ZvecRerankFunction):
    """``rerank()`` and ``arerank()``, written once on top of ``prepare()`` and
    ``score_texts()``; shared by :class:`QwenReRanker` and :class:`CachedReRanker`.

    With zvec installed, this class (so both rerankers) is a ``zvec.extension.RerankFunction``
    for ``isinstance``, ``issubclass`` and type checkers, whether zvec is imported before or
    after rerank-cache; importing rerank-cache never imports zvec.
    """

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
            return self._fall_back(exc, collected, limit)
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
        collected = await self._aprepare(query_results)
        if not collected.candidates:
            return nothing_to_score(collected, self.rerank_field)
        try:
            result = await self.ascore_texts(collected.texts)
        except DashScopeError as exc:
            return self._fall_back(exc, collected, limit)
        return assemble(collected.candidates, result.scores, limit)

    async def _aprepare(self: _Host, query_results: Any) -> Collected[Any]:
        """``prepare`` for the event loop: large inputs are read in a worker thread."""
        if _document_count(query_results) > _PREPARE_IN_THREAD:
            # Reading, cleaning and trimming thousands of texts is CPU work: off the loop.
            return await asyncio.to_thread(self.prepare, query_results)
        return self.prepare(query_results)

    def _fall_back(
        self: _Host, exc: DashScopeError, collected: Collected[Any], limit: int
    ) -> list[Any]:
        """With ``on_error="fallback"``: retrieval order, original scores, logged and counted."""
        if self.on_error != "fallback":
            raise exc
        logger.warning(
            "rerank-cache: DashScope failed (%s); returning %d documents in retrieval order "
            "with their original scores (on_error='fallback')",
            exc,
            min(limit, len(collected.candidates)),
        )
        self._count_fallback()
        return [doc for doc, _ in collected.candidates[:limit]]


#: The zvec module that defines ``RerankFunction`` (an ABC, alias ``zvec.extension.ReRanker``).
_RERANK_FUNCTION_MODULE = "zvec.extension.rerank_function"


def _register_with(module: ModuleType) -> None:
    """Make :class:`RerankMethods` a virtual subclass of zvec's ``RerankFunction``."""
    module.RerankFunction.register(RerankMethods)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs zvec's own loader, then registers :class:`RerankMethods` with the ABC it defined."""

    def __init__(self, loader: importlib.abc.Loader, watcher: _ZvecWatcher) -> None:
        self._loader = loader
        self._watcher = watcher

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Tracebacks, inspect and reloads should see zvec's loader, not this wrapper.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register_with(module)
        self._watcher.retire()


class _ZvecWatcher(importlib.abc.MetaPathFinder):
    """A one-shot import hook: when zvec defines ``RerankFunction``, register with it.

    It answers for that one module only (every other import passes straight through) and
    leaves ``sys.meta_path`` once the registration is done.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _RERANK_FUNCTION_MODULE:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None

    def retire(self) -> None:
        """Leave ``sys.meta_path``: the registration is done."""
        with contextlib.suppress(ValueError):  # already gone
            sys.meta_path.remove(self)


def _watch_for_zvec() -> None:
    """Register with zvec's ``RerankFunction`` now if zvec is loaded, else when it is."""
    loaded = sys.modules.get(_RERANK_FUNCTION_MODULE)
    if loaded is not None and hasattr(loaded, "RerankFunction"):
        _register_with(loaded)
    elif importlib.util.find_spec("zvec") is not None:  # installed, not imported yet
        sys.meta_path.insert(0, _ZvecWatcher())


_watch_for_zvec()


def _document_count(query_results: Any) -> int:
    """How many documents the input holds, without reading them (0 if it is odd)."""
    lists = query_results.values() if isinstance(query_results, Mapping) else query_results
    try:
        return sum(len(docs) for docs in lists if docs is not None)
    except TypeError:
        return 0  # not a list of lists: prepare() raises the clear error


def check_topn(topn: Any) -> int:
    """Return ``topn`` if it is a positive int, else raise :class:`ConfigurationError`."""
    if isinstance(topn, bool) or not isinstance(topn, int):
        raise ConfigurationError(f"topn must be a positive integer, not {topn!r}")
    if topn < 1:
        raise ConfigurationError(f"topn must be at least 1, got {topn}")
    return topn


def check_query(query: Any) -> str:
    """Return ``query`` if it is a non-empty string UTF-8 can encode, else raise."""
    if query is None or not isinstance(query, str) or not query.strip():
        raise ConfigurationError("Query is required for QwenReRanker: a non-empty string")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            "The query contains characters UTF-8 cannot encode (lone surrogates)"
        ) from None
    return query


def check_on_error(on_error: Any) -> OnError:
    """Return ``on_error`` if it is ``"raise"``, ``"fallback"`` or ``"stale"``, else raise."""
    if on_error not in _ON_ERROR:
        raise ConfigurationError(
            f"on_error must be 'raise', 'fallback' or 'stale', not {on_error!r}"
        )
    return on_error  # type: ignore[no-any-return]


def nothing_to_score(collected: Collected[Any], rerank_field: str) -> list[Any]:
    """Empty input gives ``[]``; documents without any text raise, as zvec does."""
    if collected.seen == 0:
        return []
    raise NoDocumentsError(
        f"No documents to rerank: none of the {collected.seen} documents has text in "
        f"field {rerank_field!r}"
    )
