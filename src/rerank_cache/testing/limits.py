"""The limits the local server enforces: the client's table, where Alibaba documents one.

There is one :class:`~rerank_cache.planning.ModelLimits` class and one table,
:data:`rerank_cache.planning.MODEL_LIMITS`, which the reranker plans its requests with. The
server enforces the same numbers, so a test fails the way DashScope would when a client
oversteps them. The one difference is a limit Alibaba does not document: there the client
assumes a small one to stay safe, while a stand-in for the service must not refuse what the
service may accept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ..planning import MODEL_LIMITS as PLANNED_LIMITS
from ..planning import ModelLimits

__all__ = ["MAX_DOCUMENT_CHARS", "MODEL_LIMITS", "ModelLimits", "served_limits"]

MAX_DOCUMENT_CHARS: Final = ModelLimits.max_item_chars
"""Longest accepted document, in characters (``ModelLimits.max_item_chars`` unless a model
says otherwise)."""

_QWEN37: Final = "qwen3.7-text-rerank"

MODEL_LIMITS: Final[Mapping[str, ModelLimits]] = MappingProxyType(
    {
        **PLANNED_LIMITS,
        # Alibaba documents 32,768 tokens per item for this model and no request budget;
        # planning trims items to 8,000 and budgets 30,000 so the client stays safe. The
        # server takes the documented item cap and the largest budget any model documents.
        _QWEN37: dataclasses.replace(
            PLANNED_LIMITS[_QWEN37],
            max_item_tokens=32_768,
            max_request_tokens=max(lim.max_request_tokens for lim in PLANNED_LIMITS.values()),
        ),
    }
)
"""The models the server knows, with the limits it enforces. Others get 404 ``ModelNotFound``."""


def served_limits(
    models: Mapping[str, ModelLimits] | None, max_documents: Mapping[str, int] | None
) -> Mapping[str, ModelLimits]:
    """:data:`MODEL_LIMITS` with a server's extra models and per-model document limits.

    Raises:
        ValueError: If ``max_documents`` names an unknown model or a limit below 1.
    """
    limits = dict(MODEL_LIMITS)
    limits.update(models or {})
    for model, maximum in (max_documents or {}).items():
        if model not in limits:
            raise ValueError(f"max_documents names an unknown model: {model!r}")
        if maximum < 1:
            raise ValueError("max_documents values must be >= 1")
        limits[model] = dataclasses.replace(limits[model], max_documents=maximum)
    return MappingProxyType(limits)
