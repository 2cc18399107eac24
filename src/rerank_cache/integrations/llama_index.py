"""LlamaIndex: ``CachedDashScopeRerank``, a node postprocessor backed by the score cache.

A one-line swap for ``llama-index-postprocessor-dashscope-rerank``'s ``DashScopeRerank``::

    from llama_index.postprocessor.dashscope_rerank import DashScopeRerank     # before
    from rerank_cache.integrations.llama_index import CachedDashScopeRerank    # after

Nodes are scored on the text that class sends, ``node.get_content(metadata_mode=
MetadataMode.EMBED)``, and only (query, text) pairs the cache does not hold reach DashScope.
Needs ``pip install 'rerank-cache[llama-index]'``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager as ContextManager
from typing import Any

from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.callbacks.base import EventContext

# The documented import path; the module re-exports it without declaring __all__.
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field

from ._shared import CachedSettings, Ranked

__all__ = ["CachedDashScopeRerank"]

_dispatcher = get_dispatcher(__name__)


class CachedDashScopeRerank(CachedSettings, BaseNodePostprocessor):
    """Rerank LlamaIndex nodes with DashScope TextReRank, each score fetched once.

    Args:
        model: the DashScope rerank model (the LlamaIndex package defaults to
            ``gte-rerank``; pass it to keep the same scores).
        top_n: how many nodes to return, best first.
        api_key: the DashScope API key (also accepted as ``dashscope_api_key``); defaults to
            ``DASHSCOPE_API_KEY``. Kept as a ``SecretStr``: never shown in ``repr``.
        instruct: a task instruction for models that take one (``qwen3-rerank``).
        base_url: the API base address; defaults to ``DASHSCOPE_HTTP_BASE_URL``, else
            DashScope's Beijing endpoint.
        cache: a score store (:class:`~rerank_cache.ScoreCache`, ``RedisScoreCache``), a
            directory or cache URL (``redis://...``, ``file://...``), or None for the store
            ``QwenReRanker(...).cached()`` would use.

    The key and the store are checked when the object is built, so a missing key raises
    ``ValueError`` there. Like LlamaIndex's own postprocessors, unknown keyword arguments
    (such as ``return_documents``) are ignored. ``model``, ``api_key``, ``instruct``,
    ``base_url`` and ``cache`` cannot be changed afterwards; ``top_n`` can.

    Raises:
        ValueError: (a :class:`~rerank_cache.ConfigurationError`) no API key, or a bad
            setting.
    """

    top_n: int = Field(default=3, description="Top N nodes to return.")

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this component under."""
        return "CachedDashScopeRerank"

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = self._start(nodes, query_bundle)
        if not nodes:
            return []
        with self._event(nodes, query) as event:
            return self._finish(nodes, self._ranker.rank(query, _texts(nodes), self.top_n), event)

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = self._start(nodes, query_bundle)
        if not nodes:
            return []
        with self._event(nodes, query) as event:
            return self._finish(
                nodes, await self._ranker.arank(query, _texts(nodes), self.top_n), event
            )

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> str:
        _dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model
            )
        )
        if query_bundle is None:
            raise ValueError("Missing query bundle: pass query_str= or query_bundle=")
        return query_bundle.query_str

    def _event(self, nodes: list[NodeWithScore], query: str) -> ContextManager[EventContext]:
        """The RERANKING callback event, as LlamaIndex's own rerankers report it."""
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }
        return self.callback_manager.event(CBEventType.RERANKING, payload=payload)

    @staticmethod
    def _finish(
        nodes: list[NodeWithScore], ranked: Ranked, event: EventContext
    ) -> list[NodeWithScore]:
        best = [NodeWithScore(node=nodes[position].node, score=score) for position, score in ranked]
        event.on_end(payload={EventPayload.NODES: best})
        _dispatcher.event(ReRankEndEvent(nodes=best))
        return best


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    # The text LlamaIndex's own DashScopeRerank sends: content plus embed-visible metadata.
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
