"""DashScope's rules for a native rerank request, with the messages DashScope answers.

The local server (:mod:`rerank_cache.testing`) enforces them as DashScope does, and the
proxy (:mod:`rerank_cache.serve`) refuses what DashScope would refuse before anything is
looked up or sent, so a client cannot tell either from the service. Each check returns the
``InvalidParameter`` message of the first rule broken, or ``None``; the caller raises its
own error type with it. ``path`` is where the field sits (``"input."`` in the native body,
``""`` in the OpenAI-style one), as DashScope's messages name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["documents_problem", "missing_parameter", "parameters_problem"]


def missing_parameter(name: str) -> str:
    """DashScope's message for a required parameter that is absent or empty."""
    return f'Required parameter "{name}" missing from request.'


def documents_problem(
    documents: object, *, max_documents: int, max_item_chars: int, path: str
) -> str | None:
    """What is wrong with ``documents`` (absent counts as empty), or None."""
    if documents is None:
        documents = []
    if not isinstance(documents, list):
        return f"documents should be a list.: {path}documents"
    if not documents or len(documents) > max_documents:
        return (
            "batch size of documents is invalid, it should not be empty or larger than "
            f"{max_documents}"
        )
    for i, document in enumerate(documents):
        if not isinstance(document, str):
            return f"document index:{i} is invalid, it should be a string"
        if not document:
            return f"text input should not be empty.: {path}documents"
        if len(document) > max_item_chars:
            return f"document index:{i} is invalid, it should not be larger than {max_item_chars}"
    return None


def parameters_problem(params: Mapping[str, Any], *, path: str) -> str | None:
    """What is wrong with ``top_n`` or ``return_documents``, or None."""
    top_n = params.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        return f"top_n should be a positive integer.: {path}top_n"
    return_documents = params.get("return_documents")
    if return_documents is not None and not isinstance(return_documents, bool):
        return f"return_documents should be a boolean.: {path}return_documents"
    return None
