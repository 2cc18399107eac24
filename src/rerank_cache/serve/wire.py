"""DashScope's wire format for the proxy: parse and check requests, build answers. Pure.

Both routes carry the same request: the native one nests it
(``{"model", "input": {"query", "documents"}, "parameters": {...}}``), the OpenAI-style one
is flat (``{"model", "query", "documents", "top_n", "instruct"}``). Bad input gets the
status, code and message DashScope gives for it (see the DashScope facts), so a client
cannot tell the proxy from the service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..planning import DEFAULT_LIMITS
from ..wire_rules import documents_problem, missing_parameter, parameters_problem

__all__ = [
    "MAX_DOCUMENT_CHARS",
    "ProxyError",
    "RerankRequest",
    "compatible_error_body",
    "compatible_response",
    "native_error_body",
    "native_response",
    "parse_compatible",
    "parse_json",
    "parse_native",
    "ranked",
]

#: DashScope answers 400 for a longer document (the same for every model it lists).
MAX_DOCUMENT_CHARS = DEFAULT_LIMITS.max_item_chars


class ProxyError(Exception):
    """A request the proxy answers with an error: HTTP status, DashScope code, message.

    Messages never contain a key or token.
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _invalid(message: str) -> ProxyError:
    return ProxyError(400, "InvalidParameter", message)


@dataclass(frozen=True)
class RerankRequest:
    """One checked rerank request, whichever route it came by."""

    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None
    return_documents: bool
    instruct: str | None


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or the 400 DashScope gives."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _invalid("The request body must be a JSON object.")
    return payload


def parse_native(payload: Mapping[str, Any], *, max_documents: int) -> RerankRequest:
    """Check a native request (``model``, ``input``, ``parameters``)."""
    inp = payload.get("input")
    if not isinstance(inp, dict):
        raise ProxyError(400, "BadRequest.EmptyInput", missing_parameter("input"))
    params = payload.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _invalid("parameters should be an object.")
    return _checked(payload.get("model"), inp, params, max_documents, "input.", "parameters.")


def parse_compatible(payload: Mapping[str, Any], *, max_documents: int) -> RerankRequest:
    """Check an OpenAI-style request (``model, query, documents, top_n, instruct``)."""
    return _checked(payload.get("model"), payload, payload, max_documents, "", "")


def _checked(
    model: Any,
    inp: Mapping[str, Any],
    params: Mapping[str, Any],
    max_documents: int,
    input_path: str,
    params_path: str,
) -> RerankRequest:
    if model is None or model == "":
        raise ProxyError(400, "BadRequest.EmptyModel", missing_parameter("model"))
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model should be a non-empty string.")
    query = inp.get("query")
    if query is None or query == "":
        raise ProxyError(400, "BadRequest.EmptyInput", missing_parameter("query"))
    if not isinstance(query, str) or not query.strip():
        raise _invalid(f"query should be a non-empty string.: {input_path}query")
    _encodable(query, f"{input_path}query")
    documents = _documents(inp.get("documents"), max_documents, input_path)
    problem = parameters_problem(params, path=params_path)
    if problem is not None:
        raise _invalid(problem)
    top_n = params.get("top_n")
    return_documents = params.get("return_documents")
    instruct = params.get("instruct")
    if instruct is not None:
        # A blank instruct would be cached apart from "no instruct" for nothing.
        if not isinstance(instruct, str) or not instruct.strip():
            raise _invalid(f"instruct should be a non-empty string.: {params_path}instruct")
        _encodable(instruct, f"{params_path}instruct")
    return RerankRequest(
        model=model,
        query=query,
        documents=documents,
        top_n=top_n,
        return_documents=bool(return_documents),
        instruct=instruct,
    )


def _documents(value: Any, max_documents: int, input_path: str) -> tuple[str, ...]:
    problem = documents_problem(
        value, max_documents=max_documents, max_item_chars=MAX_DOCUMENT_CHARS, path=input_path
    )
    if problem is not None:
        raise _invalid(problem)
    for document in value:
        _encodable(document, f"{input_path}documents")
    return tuple(value)


def _encodable(text: str, where: str) -> None:
    # JSON may carry lone surrogates ("\ud800"); no request to DashScope can.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(f"text is not valid Unicode.: {where}") from None


def ranked(request: RerankRequest, scores: Mapping[str, float]) -> list[dict[str, Any]]:
    """The results DashScope would give: best first (ties in input order), cut to top_n."""
    documents = request.documents
    order = sorted(range(len(documents)), key=lambda i: (-scores[documents[i]], i))
    if request.top_n is not None:
        order = order[: request.top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": scores[documents[i]]}
        if request.return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    return results


def native_response(
    results: Sequence[Mapping[str, Any]], total_tokens: int, request_id: str
) -> dict[str, Any]:
    """The body of a native 200."""
    return {
        "output": {"results": list(results)},
        "usage": {"total_tokens": total_tokens},
        "request_id": request_id,
    }


def compatible_response(
    results: Sequence[Mapping[str, Any]], total_tokens: int, request_id: str, model: str
) -> dict[str, Any]:
    """The body of an OpenAI-style 200."""
    return {
        "id": request_id,
        "object": "list",
        "model": model,
        "results": list(results),
        "usage": {"total_tokens": total_tokens},
    }


def native_error_body(error: ProxyError, request_id: str) -> dict[str, Any]:
    """DashScope's error body: ``request_id``, ``code``, ``message``."""
    return {"request_id": request_id, "code": error.code, "message": error.message}


def compatible_error_body(error: ProxyError, request_id: str) -> dict[str, Any]:
    """An OpenAI-style error body (DashScope's compatible mode answers this shape)."""
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return {
        "error": {"code": error.code, "message": error.message, "type": kind},
        "request_id": request_id,
    }
