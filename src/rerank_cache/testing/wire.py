"""DashScope's wire format as the local server speaks it: paths, error bodies, replies.

Internal to :mod:`rerank_cache.testing`; only :data:`RERANK_PATH` and :data:`MAX_BODY_BYTES`
are public (re-exported there).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "INVALID_API_KEY",
    "MAX_BODY_BYTES",
    "RERANK_PATH",
    "ApiError",
    "ClientGoneError",
    "Reply",
    "Seen",
    "default_error",
    "dropped_reply",
    "error_reply",
    "is_int",
    "key_digest",
    "not_found_reply",
    "presented_key",
    "seen_from",
]

RERANK_PATH: Final = "/api/v1/services/rerank/text-rerank/text-rerank"
"""The URL path the ``dashscope`` SDK posts to when ``base_address`` is ``server.base_url``."""

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Largest accepted request body (16 MiB); a larger one gets 413 ``BadRequest.TooLarge``."""

INVALID_API_KEY: Final = "Invalid API-key provided."
"""DashScope's message for a missing or unknown key."""

_DEFAULT_ERRORS: Final[Mapping[int, tuple[str, str]]] = MappingProxyType(
    {
        400: ("InvalidParameter", "The request parameters are invalid."),
        401: ("InvalidApiKey", INVALID_API_KEY),
        403: ("AccessDenied", "Access denied."),
        404: ("ModelNotFound", "Model not exist."),
        413: ("BadRequest.TooLarge", "Request entity too large."),
        429: ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
        500: (
            "InternalError",
            "An internal error has occured, please try again later or contact service support.",
        ),
        503: ("ServiceUnavailable", "The service is temporarily unavailable, try again later."),
    }
)


class ClientGoneError(Exception):
    """The client closed the connection before sending the whole body."""


class ApiError(Exception):
    """A request DashScope would refuse: answered with ``status`` and a JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Reply:
    """What to answer one request with, and what to count for it.

    ``status`` 0 means: drop the connection without an answer. ``trickle`` is
    ``(seconds, chunk)``: send the body ``chunk`` bytes at a time, ``seconds`` apart.
    ``delay`` is an injected wait, in seconds, on top of the latency.
    """

    status: int
    request_id: str
    payload: dict[str, Any] | None = None
    raw_body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    code: str | None = None
    documents: int = 0
    total_tokens: int = 0
    fault: str | None = None
    close: bool = False
    trickle: tuple[float, int] | None = None
    delay: float = 0.0


@dataclass
class Seen:
    """Best-effort view of a request body, for the request log."""

    model: str | None = None
    query: str | None = None
    documents: tuple[str, ...] = ()
    instruct: str | None = None
    top_n: int | None = None
    return_documents: bool | None = None
    fingerprint: str | None = None


def error_reply(
    status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None
) -> Reply:
    """A DashScope error answer: ``{"request_id", "code", "message"}`` with ``status``."""
    request_id = str(uuid.uuid4())
    return Reply(
        status=status,
        request_id=request_id,
        payload={"request_id": request_id, "code": code, "message": message},
        headers=headers or [],
        code=code,
    )


def not_found_reply() -> Reply:
    """The answer to any path or method other than POST to :data:`RERANK_PATH`."""
    return error_reply(404, "NotFound", "The requested resource is not found.")


def dropped_reply(fault: str, request_id: str | None = None) -> Reply:
    """No answer at all: the connection is closed (counted under status 0)."""
    return Reply(status=0, request_id=request_id or str(uuid.uuid4()), fault=fault)


def default_error(status: int) -> tuple[str, str]:
    """DashScope's usual ``(code, message)`` for an HTTP error ``status``."""
    if status in _DEFAULT_ERRORS:
        return _DEFAULT_ERRORS[status]
    if status >= 500:
        return _DEFAULT_ERRORS[500]
    return ("BadRequest", "The request is invalid.")


def key_digest(raw: bytes) -> str:
    """The SHA-256 hex digest the server keeps instead of a key."""
    return hashlib.sha256(raw).hexdigest()


def presented_key(authorization: str | None) -> bytes | None:
    """The bearer key of an ``Authorization`` header, as raw bytes, or None if there is none."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credentials = credentials.strip()
    if not credentials:
        return None
    # http.server decodes header values as ISO-8859-1; recover the raw bytes.
    return credentials.encode("latin-1", "replace")


def is_int(value: object) -> bool:
    """True for an ``int`` that is not a ``bool`` (JSON ``true`` is not a number here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def seen_from(payload: object) -> Seen:
    """Whatever fields of a rerank body have the right type; the rest stay empty."""
    seen = Seen()
    if not isinstance(payload, dict):
        return seen
    model = payload.get("model")
    seen.model = model if isinstance(model, str) else None
    inp = payload.get("input")
    if isinstance(inp, dict):
        query = inp.get("query")
        seen.query = query if isinstance(query, str) else None
        docs = inp.get("documents")
        if isinstance(docs, list) and all(isinstance(doc, str) for doc in docs):
            seen.documents = tuple(docs)
    params = payload.get("parameters")
    if isinstance(params, dict):
        instruct = params.get("instruct")
        seen.instruct = instruct if isinstance(instruct, str) else None
        top_n = params.get("top_n")
        seen.top_n = top_n if is_int(top_n) else None
        return_documents = params.get("return_documents")
        seen.return_documents = return_documents if isinstance(return_documents, bool) else None
    return seen
