"""LangChain: ``CachedDashScopeRerank``, a document compressor backed by the score cache.

A one-line swap for ``langchain_community``'s ``DashScopeRerank``::

    from langchain_community.document_compressors import DashScopeRerank      # before
    from rerank_cache.integrations.langchain import CachedDashScopeRerank      # after

It works wherever a ``BaseDocumentCompressor`` does, ``ContextualCompressionRetriever``
included, and only (query, document) pairs the cache does not hold reach DashScope. Needs
``pip install 'rerank-cache[langchain]'``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict

from ._shared import CachedSettings, Ranked

__all__ = ["CachedDashScopeRerank"]


class CachedDashScopeRerank(CachedSettings, BaseDocumentCompressor):
    """Rerank LangChain documents with DashScope TextReRank, each score fetched once.

    Args:
        model: the DashScope rerank model (``langchain_community``'s class defaults to
            ``gte-rerank``; pass it to keep the same scores).
        top_n: how many documents to return, best first; None returns all.
        score_threshold: documents scoring below this are dropped.
        api_key: the DashScope API key (also accepted as ``dashscope_api_key``); defaults to
            ``DASHSCOPE_API_KEY``. Kept as a ``SecretStr``: never shown in ``repr``.
        instruct: a task instruction for models that take one (``qwen3-rerank``).
        base_url: the API base address; defaults to ``DASHSCOPE_HTTP_BASE_URL``, else
            DashScope's Beijing endpoint.
        cache: a score store (:class:`~rerank_cache.ScoreCache`, ``RedisScoreCache``), a
            directory or cache URL (``redis://...``, ``file://...``), or None for the store
            ``QwenReRanker(...).cached()`` would use.

    The key and the store are checked when the object is built, so a missing key raises
    ``ValueError`` there. ``model``, ``api_key``, ``instruct``, ``base_url`` and ``cache``
    cannot be changed afterwards; ``top_n`` and ``score_threshold`` can.

    Raises:
        ValueError: (a :class:`~rerank_cache.ConfigurationError`) no API key, or a bad
            setting.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    top_n: int | None = 3
    score_threshold: float = 0.0

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Return the ``top_n`` documents most relevant to ``query``, best first.

        Each is a copy with ``metadata["relevance_score"]`` added (the rest of the metadata
        and the id kept). Documents with blank ``page_content`` are never sent. An empty
        list gives ``[]`` without a request.

        Raises:
            ValueError: the query is empty, or ``top_n`` is not positive.
            rerank_cache.DashScopeError: DashScope failed after retries.
        """
        del callbacks
        ranked = self._ranker.rank(query, _texts(documents), self.top_n)
        return self._pick(documents, ranked)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The asyncio twin of :meth:`compress_documents`; the event loop is never blocked."""
        del callbacks
        ranked = await self._ranker.arank(query, _texts(documents), self.top_n)
        return self._pick(documents, ranked)

    def _pick(self, documents: Sequence[Document], ranked: Ranked) -> list[Document]:
        picked = []
        for position, score in ranked:
            if score < self.score_threshold:
                continue
            original = documents[position]
            metadata = copy.deepcopy(original.metadata)
            metadata["relevance_score"] = score
            picked.append(original.model_copy(update={"metadata": metadata}))
        return picked


def _texts(documents: Sequence[Document]) -> list[str]:
    return [document.page_content for document in documents]
