"""A local, DashScope-compatible TextReRank server for your own tests.

:class:`DashScopeServer` speaks the wire format of DashScope's native rerank endpoint
(``POST {base}/services/rerank/text-rerank/text-rerank``) on ``127.0.0.1`` with a random port,
so the real ``dashscope`` SDK (or any HTTP client) can be exercised without network access,
without an API key and without paying for tokens. It enforces DashScope's documented limits
with DashScope's error messages, bills ``usage.total_tokens`` with a deterministic stand-in
tokenizer (:func:`count_tokens`), scores pairs with a deterministic, pointwise relevance
function (:func:`score`), and can inject faults: HTTP errors (with ``Retry-After``), dropped
connections, slow answers and malformed 200 responses.

It uses the standard library only, and every request runs on its own thread, so concurrent
clients are served in parallel.

Example:
    .. code-block:: python

        import dashscope
        from rerank_cache.testing import DashScopeServer

        with DashScopeServer(api_keys=["sk-test"]) as server:
            resp = dashscope.TextReRank.call(
                model="gte-rerank-v2",
                query="what is a vector database",
                documents=["a vector database stores embeddings", "bananas are yellow"],
                api_key="sk-test",
                base_address=server.base_url,  # pass per call; never mutate dashscope globals
            )
            assert resp.status_code == 200
            assert resp.output.results[0].index == 0

            server.fail_next(429, retry_after=1.5)  # the next request is throttled
            resp = dashscope.TextReRank.call(
                model="gte-rerank-v2", query="q", documents=["d"],
                api_key="sk-test", base_address=server.base_url,
            )
            assert resp.status_code == 429 and resp.headers["Retry-After"] == "1.5"
            assert server.stats.requests == 2

    The SDK reads ``DASHSCOPE_HTTP_BASE_URL`` once, at import, so pass
    ``base_address=server.base_url`` on every call rather than setting the variable in a test.

Note:
    The server never stores API keys: it keeps SHA-256 digests of the accepted keys, and the
    request log carries only a short fingerprint of the key a request presented. Keys never
    appear in responses, in ``repr`` output or in exception messages, and the per-request
    logging of :mod:`http.server` is switched off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import math
import re
import socket
import socketserver
import sys
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "MALFORM_KINDS",
    "MAX_BODY_BYTES",
    "MAX_DOCUMENT_CHARS",
    "MODEL_LIMITS",
    "RERANK_PATH",
    "DashScopeServer",
    "ModelLimits",
    "RecordedRequest",
    "ServerStats",
    "count_tokens",
    "score",
]

RERANK_PATH: Final = "/api/v1/services/rerank/text-rerank/text-rerank"
"""The URL path the ``dashscope`` SDK posts to when ``base_address`` is :attr:`base_url`."""

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Largest accepted request body (16 MiB); a larger one gets 413 ``BadRequest.TooLarge``."""

MAX_DOCUMENT_CHARS: Final = 300_000
"""Longest accepted document, in characters."""

MALFORM_KINDS: Final = frozenset(
    {
        "missing_output",
        "index_out_of_range",
        "missing_score",
        "nan_score",
        "fewer_results",
        "not_json",
    }
)
"""The kinds of wrong 200 responses :meth:`DashScopeServer.malform_next` can produce."""


@dataclass(frozen=True)
class ModelLimits:
    """Per-model limits the server enforces.

    Attributes:
        max_documents: Most documents accepted in one request.
        max_item_tokens: Tokens billed at most per item (the query, or one document); longer
            items are billed as if truncated to this many tokens.
        max_request_tokens: Budget for ``min(query, item) * n + sum(min(doc, item))`` tokens.
    """

    max_documents: int
    max_item_tokens: int
    max_request_tokens: int


MODEL_LIMITS: Final[Mapping[str, ModelLimits]] = MappingProxyType(
    {
        "gte-rerank-v2": ModelLimits(500, 4_000, 30_000),
        "qwen3-rerank": ModelLimits(500, 4_000, 30_000),
        "qwen3-vl-rerank": ModelLimits(100, 8_000, 120_000),
        "gte-rerank": ModelLimits(500, 4_000, 30_000),
        "qwen3.7-text-rerank": ModelLimits(100, 32_768, 120_000),
    }
)
"""The models the server knows, with DashScope's limits. Others get 404 ``ModelNotFound``."""

_DEFAULT_ERRORS: Final[Mapping[int, tuple[str, str]]] = MappingProxyType(
    {
        400: ("InvalidParameter", "The request parameters are invalid."),
        401: ("InvalidApiKey", "Invalid API-key provided."),
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

_INVALID_API_KEY: Final = "Invalid API-key provided."
_DRAIN_CHUNK: Final = 64 * 1024
_STOP_JOIN_SECONDS: Final = 5.0

# ---------------------------------------------------------------------------------------------
# Tokens and scores
# ---------------------------------------------------------------------------------------------

_ASCII_LETTER_RUN: Final = re.compile(r"[A-Za-z]+")
_ASCII_DIGIT_OR_PUNCT: Final = re.compile(r"[0-9!-/:-@\[-`{-~]")
_NON_ASCII_NON_SPACE: Final = re.compile(r"[^\x00-\x7f\s]")
_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")

# Han ideographs (with extensions and compatibility forms), kana: one token per character.
_CJK: Final = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_WORD: Final = re.compile("[" + _CJK + "]|[^\\W" + _CJK + "]+")


def count_tokens(text: str) -> int:
    """Count tokens the way the server bills them (a deterministic stand-in for a BPE).

    The rule: each maximal run of ASCII letters counts ``ceil(len / 4)`` tokens; each ASCII
    digit and each ASCII punctuation or symbol character counts 1; every other non-whitespace
    character counts 1, or 2 when it lies outside the Basic Multilingual Plane. Whitespace
    (any character for which :meth:`str.isspace` is true) and ASCII control characters
    count 0.

    Args:
        text: The text to count.

    Returns:
        The number of tokens.

    Example:
        >>> count_tokens("Hello, world 42")
        7
        >>> count_tokens("向量数据库")
        5
    """
    letters = sum((len(run) + 3) // 4 for run in _ASCII_LETTER_RUN.findall(text))
    singles = len(_ASCII_DIGIT_OR_PUNCT.findall(text))
    non_ascii = len(_NON_ASCII_NON_SPACE.findall(text))
    astral = len(_ASTRAL.findall(text))
    return letters + singles + non_ascii + astral


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _jitter(model: str, instruct: str | None, query: str, document: str) -> float:
    digest = hashlib.blake2b(digest_size=8, person=b"rerank-testing")
    for part in (model, instruct or "", query, document):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return int.from_bytes(digest.digest(), "big") / 2.0**64 * 0.05


def score(
    query: str,
    document: str,
    *,
    model: str = "gte-rerank-v2",
    instruct: str | None = None,
) -> float:
    """Score one (query, document) pair exactly as the server does.

    The score is deterministic and pointwise: it depends only on the pair, the model and the
    instruction, never on the other documents of a request. It behaves like relevance: the
    text is split into lowercase word tokens (``\\w+`` runs, with each CJK character a token
    of its own), and the score grows with the fraction of the query's distinct tokens that
    occur in the document, slightly favouring shorter documents::

        0.02 + 0.9 * coverage ** 0.8 / (1 + log1p(len(document_tokens)) / 10) + jitter

    where ``jitter`` in ``[0, 0.05)`` is a hash of ``(model, instruct or "", query,
    document)``, so ties are rare and a different model or instruction changes the score.
    A document that shares words with a short query therefore scores higher than one that
    shares none. The result is clamped to ``[0, 1]`` and is not rounded.

    Args:
        query: The query text.
        document: The document text.
        model: The model name; it only changes the jitter.
        instruct: The task instruction, if any; it only changes the jitter.

    Returns:
        The relevance score in ``[0, 1]``.
    """
    query_tokens = set(_words(query))
    document_tokens = _words(document)
    coverage = (
        len(query_tokens.intersection(document_tokens)) / len(query_tokens) if query_tokens else 0.0
    )
    length_factor = 1.0 / (1.0 + math.log1p(len(document_tokens)) / 10.0)
    value = (
        0.02
        + 0.9 * math.pow(coverage, 0.8) * length_factor
        + _jitter(model, instruct, query, document)
    )
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------------------------------------
# Public records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of the server's counters (see :attr:`DashScopeServer.stats`).

    Attributes:
        requests: POST requests received (including faulted and rejected ones).
        ok_requests: Requests answered with HTTP 200 (malformed 200s included).
        documents: Documents in the requests answered with HTTP 200.
        tokens: ``usage.total_tokens`` billed, summed over the requests answered with 200.
        errors_by_status: Non-200 outcomes by HTTP status; dropped connections count
            under status ``0``.
        max_in_flight: Most POST requests being processed at the same moment.
    """

    requests: int = 0
    ok_requests: int = 0
    documents: int = 0
    tokens: int = 0
    errors_by_status: dict[int, int] = field(default_factory=dict)
    max_in_flight: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    """One POST request as the server saw it (see :attr:`DashScopeServer.requests_log`).

    Fields the request did not carry (or carried with a wrong type) are ``None`` or empty.

    Attributes:
        path: The URL path, without the query string.
        model: The ``model`` field.
        query: The ``input.query`` field.
        documents: The ``input.documents`` field (empty unless it was a list of strings).
        instruct: The ``parameters.instruct`` field.
        top_n: The ``parameters.top_n`` field.
        return_documents: The ``parameters.return_documents`` field.
        status: The HTTP status answered, or ``0`` when the connection was dropped.
        code: The error code answered, or ``None`` for a 200.
        api_key_fingerprint: The first 8 hex digits of the SHA-256 of the presented key, or
            ``None`` when no key was presented. Never the key itself.
        request_id: The ``request_id`` of the answer (generated even for drops).
        total_tokens: ``usage.total_tokens`` billed (0 unless the status is 200).
        fault: The injected fault that applied: ``"fail"``, ``"drop"``, ``"delay"``,
            ``"malform:<kind>"``, ``"shutdown"`` (the server stopped while the request
            waited), or ``None``.
    """

    path: str
    model: str | None
    query: str | None
    documents: tuple[str, ...]
    instruct: str | None
    top_n: int | None
    return_documents: bool | None
    status: int
    code: str | None
    api_key_fingerprint: str | None
    request_id: str
    total_tokens: int
    fault: str | None


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fault:
    kind: str  # "fail" | "drop" | "delay" | "malform"
    status: int = 0
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    malform: str | None = None
    match: str | None = None

    @property
    def label(self) -> str:
        return f"malform:{self.malform}" if self.kind == "malform" else self.kind


class _ClientGoneError(Exception):
    """The client closed the connection before sending the whole body."""


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _Reply:
    status: int  # 0: drop the connection
    request_id: str
    payload: dict[str, Any] | None = None
    raw_body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    code: str | None = None
    documents: int = 0
    total_tokens: int = 0
    fault: str | None = None
    close: bool = False


@dataclass
class _Seen:
    """Best-effort view of a request body, for the request log."""

    model: str | None = None
    query: str | None = None
    documents: tuple[str, ...] = ()
    instruct: str | None = None
    top_n: int | None = None
    return_documents: bool | None = None
    fingerprint: str | None = None


def _error_reply(
    status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None
) -> _Reply:
    request_id = str(uuid.uuid4())
    return _Reply(
        status=status,
        request_id=request_id,
        payload={"request_id": request_id, "code": code, "message": message},
        headers=headers or [],
        code=code,
    )


def _default_error(status: int) -> tuple[str, str]:
    if status in _DEFAULT_ERRORS:
        return _DEFAULT_ERRORS[status]
    if status >= 500:
        return _DEFAULT_ERRORS[500]
    return ("BadRequest", "The request is invalid.")


def _key_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seen_from(payload: object) -> _Seen:
    seen = _Seen()
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
        seen.top_n = top_n if _is_int(top_n) else None
        return_documents = params.get("return_documents")
        seen.return_documents = return_documents if isinstance(return_documents, bool) else None
    return seen


def _apply_malform(reply: _Reply, kind: str, n_documents: int) -> None:
    payload = reply.payload
    assert payload is not None
    reply.fault = f"malform:{kind}"
    if kind == "not_json":
        reply.payload = None
        reply.raw_body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return
    if kind == "missing_output":
        del payload["output"]
        return
    results: list[dict[str, Any]] = payload["output"]["results"]
    if kind == "fewer_results":
        results.pop()
    elif kind == "index_out_of_range":
        results[0]["index"] = n_documents
    elif kind == "missing_score":
        del results[0]["relevance_score"]
    elif kind == "nan_score":
        results[0]["relevance_score"] = math.nan


class _HTTPServer(http.server.ThreadingHTTPServer):
    """Threading server that tracks its connections so that stop() can end them promptly."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: DashScopeServer) -> None:
        self.owner = owner
        self._connections_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS lookup (socket.getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="dashscope-test-server-connection",
            daemon=True,
        )
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) or self.owner._stopping.is_set():
            return  # the client went away, or we are shutting down: nothing to report
        super().handle_error(request, client_address)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection (waking idle keep-alive readers) and join their threads."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for connection, _thread in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for _connection, thread in connections:
            thread.join(timeout)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rerank-cache-testing/1"
    sys_version = ""
    server: _HTTPServer

    def version_string(self) -> str:
        """The ``Server`` header value."""
        return self.server_version

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: the default writes every request line to stderr."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a protocol-level error (bad request line, unknown method) in DashScope's JSON."""
        error_code = "MethodNotAllowed" if code == 501 else "BadRequest"
        reply = _error_reply(code, error_code, message or "The request is invalid.")
        reply.close = True
        self._send(reply)

    # --- dispatch ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        """Serve the rerank endpoint; every other path gets a 404 error."""
        owner = self.server.owner
        framing: _ApiError | None = None
        body: bytes | None = b""
        try:
            body = self._read_body(owner.max_body_bytes)
        except _ApiError as error:
            framing = error
        except (_ClientGoneError, OSError):
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        owner._begin_request()
        try:
            if framing is not None:
                reply, seen = _error_reply(framing.status, framing.code, framing.message), _Seen()
                reply.close = True
            elif path.rstrip("/") != RERANK_PATH:
                reply = _error_reply(404, "NotFound", "The requested resource is not found.")
                seen = _Seen()
            else:
                reply, seen = owner._answer(body, self.headers.get("Authorization"))
            if reply.status != 0 and not owner._sleep(owner.latency):
                reply = _Reply(status=0, request_id=reply.request_id, fault="shutdown")
            owner._record(path, seen, reply)
            self._send(reply)
        finally:
            owner._end_request()

    def _not_found(self) -> None:
        reply = _error_reply(404, "NotFound", "The requested resource is not found.")
        try:
            self._read_body(self.server.owner.max_body_bytes)
        except _ApiError:
            reply.close = True
        except (_ClientGoneError, OSError):
            self.close_connection = True
            return
        self._send(reply)

    def do_GET(self) -> None:
        """Answer 404: only POST to the rerank endpoint is served."""
        self._not_found()

    def do_PUT(self) -> None:
        """Answer 404: only POST to the rerank endpoint is served."""
        self._not_found()

    def do_DELETE(self) -> None:
        """Answer 404: only POST to the rerank endpoint is served."""
        self._not_found()

    def do_PATCH(self) -> None:
        """Answer 404: only POST to the rerank endpoint is served."""
        self._not_found()

    # --- I/O -------------------------------------------------------------------------------------

    def _read_body(self, limit: int) -> bytes | None:
        """Read the body; None means it was larger than ``limit`` (read and discarded)."""
        transfer_encoding = self.headers.get("Transfer-Encoding", "identity").lower()
        if transfer_encoding != "identity":
            raise _ApiError(
                400, "InvalidParameter", "Only requests with a Content-Length are supported."
            )
        raw_length = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw_length.isdigit():
            raise _ApiError(400, "InvalidParameter", "Invalid Content-Length header.")
        remaining = int(raw_length)
        if remaining <= limit:
            body = self.rfile.read(remaining)
            if len(body) != remaining:
                raise _ClientGoneError
            return body
        while remaining > 0:  # drain, so the client can read our 413 instead of a reset
            chunk = self.rfile.read(min(remaining, _DRAIN_CHUNK))
            if not chunk:
                raise _ClientGoneError
            remaining -= len(chunk)
        return None

    def _send(self, reply: _Reply) -> None:
        if reply.status == 0:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.raw_body is not None:
            body = reply.raw_body
        else:
            body = json.dumps(reply.payload).encode("ascii")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class DashScopeServer:
    """A local DashScope TextReRank server on ``127.0.0.1`` and a random port.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`) and point the SDK at
    :attr:`base_url`. It is single-use: once stopped it cannot be started again.

    Args:
        api_keys: Keys to accept. ``None`` accepts any non-empty key; an empty iterable
            accepts none. Only SHA-256 digests of the keys are kept.
        latency: Seconds to wait before every answer, to simulate the service's latency.
            Also settable later through the :attr:`latency` attribute.
        max_documents: Per-model override of the most documents accepted per request.
        models: Extra models, or replacement limits for known ones (see :data:`MODEL_LIMITS`).
        max_body_bytes: Largest accepted request body; larger ones get 413.
        log_limit: How many requests :attr:`requests_log` keeps (the most recent ones);
            ``None`` keeps all.
        host: The interface to bind.
        port: The port to bind; 0 picks a free one.

    Raises:
        TypeError: If ``api_keys`` is a single string.
        ValueError: If a limit, the latency or a key is invalid.

    Attributes:
        latency: Seconds to wait before every answer (thread-safe to change at any time).
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] | None = None,
        latency: float = 0.0,
        max_documents: dict[str, int] | None = None,
        models: Mapping[str, ModelLimits] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        log_limit: int | None = 10_000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(api_keys, (str, bytes)):
            raise TypeError("api_keys must be an iterable of keys, not a single string")
        if latency < 0 or not math.isfinite(latency):
            raise ValueError("latency must be a finite number of seconds >= 0")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if log_limit is not None and log_limit < 0:
            raise ValueError("log_limit must be >= 0 or None")
        self._key_digests: frozenset[str] | None = None
        if api_keys is not None:
            keys = list(api_keys)
            if any(not isinstance(key, str) or not key for key in keys):
                raise ValueError("api_keys must contain non-empty strings only")
            self._key_digests = frozenset(_key_digest(key.encode("utf-8")) for key in keys)
        limits = dict(MODEL_LIMITS)
        limits.update(models or {})
        for model, maximum in (max_documents or {}).items():
            if model not in limits:
                raise ValueError(f"max_documents names an unknown model: {model!r}")
            if maximum < 1:
                raise ValueError("max_documents values must be >= 1")
            old = limits[model]
            limits[model] = ModelLimits(maximum, old.max_item_tokens, old.max_request_tokens)
        self._limits: Mapping[str, ModelLimits] = MappingProxyType(limits)
        self.latency: float = float(latency)
        self.max_body_bytes = max_body_bytes
        self._host = host
        self._port = port

        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._log: deque[RecordedRequest] = deque(maxlen=log_limit)
        self._requests = 0
        self._ok_requests = 0
        self._documents = 0
        self._tokens = 0
        self._errors: dict[int, int] = {}
        self._in_flight = 0
        self._max_in_flight = 0

        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and serve in a background thread.

        Raises:
            RuntimeError: If the server was already started (servers are single-use).
        """
        with self._lock:
            if self._httpd is not None or self._stopped:
                raise RuntimeError("DashScopeServer was already started; create a new one")
            self._httpd = _HTTPServer((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="dashscope-test-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, end open connections and join the threads.

        Idempotent, and a no-op on a server that was never started.

        Requests still waiting (``latency``, :meth:`delay_next`) are woken and their
        connections closed without an answer.
        """
        with self._lock:
            httpd = self._httpd
            if httpd is None or self._stopped:
                return
            self._stopped = True
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections(_STOP_JOIN_SECONDS)
        if self._thread is not None:
            self._thread.join(_STOP_JOIN_SECONDS)

    def __enter__(self) -> DashScopeServer:
        """Start the server.

        Returns:
            The started server.
        """
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Describe the server without any secret."""
        state = "stopped" if self._stopped else "running" if self._httpd else "not started"
        address = f"http://{self._host}:{self.port}" if self._httpd else "unbound"
        return f"<DashScopeServer {address} {state}>"

    @property
    def port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: If the server was never started.
        """
        if self._httpd is None:
            raise RuntimeError("DashScopeServer is not started")
        return self._httpd.server_port

    @property
    def base_url(self) -> str:
        """The base URL to pass as ``base_address`` (or ``DASHSCOPE_HTTP_BASE_URL``).

        For example ``"http://127.0.0.1:54321/api/v1"``.

        Raises:
            RuntimeError: If the server was never started.
        """
        return f"http://{self._host}:{self.port}/api/v1"

    @property
    def url(self) -> str:
        """The full URL of the rerank endpoint."""
        return f"http://{self._host}:{self.port}{RERANK_PATH}"

    @property
    def limits(self) -> Mapping[str, ModelLimits]:
        """The models this server knows, with the limits it enforces."""
        return self._limits

    # --- observation -------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters (see :class:`ServerStats`)."""
        with self._lock:
            return ServerStats(
                requests=self._requests,
                ok_requests=self._ok_requests,
                documents=self._documents,
                tokens=self._tokens,
                errors_by_status=dict(self._errors),
                max_in_flight=self._max_in_flight,
            )

    @property
    def requests_log(self) -> list[RecordedRequest]:
        """The recorded POST requests, in the order they were answered (a copy)."""
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        """Zero the counters and clear the request log (pending faults are kept)."""
        with self._lock:
            self._requests = self._ok_requests = self._documents = self._tokens = 0
            self._errors.clear()
            self._max_in_flight = self._in_flight
            self._log.clear()

    # --- fault injection ---------------------------------------------------------------------

    @property
    def pending_faults(self) -> int:
        """How many injected faults are still waiting for a request."""
        with self._lock:
            return len(self._faults)

    def clear_faults(self) -> None:
        """Forget every pending injected fault."""
        with self._lock:
            self._faults.clear()

    def fail_next(
        self,
        status: int,
        *,
        code: str | None = None,
        message: str | None = None,
        retry_after: float | str | None = None,
        times: int = 1,
        match: str | None = None,
    ) -> None:
        """Answer the next ``times`` rerank requests with a DashScope error.

        Faults are queued: each applies to the next rerank request, in arrival order, after
        the faults queued before it. The body is ``{"request_id", "code", "message"}``.

        Args:
            status: The HTTP status, 400-599 (e.g. 429, 500, 503).
            code: The error code; defaults by status (429 ``Throttling.RateQuota``, 500
                ``InternalError``, 503 ``ServiceUnavailable``, 401 ``InvalidApiKey``, 400
                ``InvalidParameter``, ...).
            message: The error message; a DashScope-like default by status.
            retry_after: Value of a ``Retry-After`` header to send (seconds, or an HTTP
                date string); no header when ``None``. ``1.5`` is sent as ``"1.5"``.
            times: How many consecutive requests get this error.
            match: Apply only to requests with a document containing this text (so a
                test can fail request 3 of 4 whatever order they arrive in). Every
                fault method takes ``match=``.

        Raises:
            ValueError: If ``status``, ``retry_after`` or ``times`` is invalid.
        """
        if not _is_int(status) or not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status between 400 and 599")
        header: str | None = None
        if isinstance(retry_after, str):
            if "\r" in retry_after or "\n" in retry_after:
                raise ValueError("retry_after must not contain line breaks")
            header = retry_after
        elif retry_after is not None:
            if isinstance(retry_after, bool) or retry_after < 0 or not math.isfinite(retry_after):
                raise ValueError("retry_after must be a finite number of seconds >= 0")
            header = (
                format(retry_after, "g") if isinstance(retry_after, float) else str(retry_after)
            )
        default_code, default_message = _default_error(status)
        fault = _Fault(
            "fail",
            status=status,
            code=code or default_code,
            message=message or default_message,
            retry_after=header,
        )
        self._enqueue(fault, times, match)

    def drop_next(self, times: int = 1, *, match: str | None = None) -> None:
        """Drop the connection of the next ``times`` rerank requests without any answer.

        The body is read, then the socket is shut down. The ``dashscope`` SDK retries once on
        a connection error by itself, so use ``times=2`` to make one SDK call fail.

        Args:
            times: How many consecutive requests are dropped.

        Raises:
            ValueError: If ``times`` is less than 1.
        """
        self._enqueue(_Fault("drop"), times, match)

    def delay_next(self, seconds: float, times: int = 1, *, match: str | None = None) -> None:
        """Answer the next ``times`` rerank requests ``seconds`` late (on top of ``latency``).

        Use with a client timeout (the SDK's ``request_timeout=``) to provoke timeouts. A
        delayed request is otherwise answered normally. :meth:`stop` cuts the wait short.

        Args:
            seconds: Extra seconds to wait before answering.
            times: How many consecutive requests are delayed.

        Raises:
            ValueError: If ``seconds`` is negative or ``times`` is less than 1.
        """
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError("seconds must be a finite number >= 0")
        self._enqueue(_Fault("delay", seconds=float(seconds)), times, match)

    def malform_next(self, kind: str, times: int = 1, *, match: str | None = None) -> None:
        """Give the next ``times`` rerank requests a wrong HTTP 200 answer.

        Kinds: ``"missing_output"`` (no ``output`` key), ``"index_out_of_range"`` (the first
        result's ``index`` equals the number of documents), ``"missing_score"`` (the first
        result lacks ``relevance_score``), ``"nan_score"`` (the first result's score is
        ``NaN``), ``"fewer_results"`` (the last result is missing), ``"not_json"`` (an HTML
        body labelled ``application/json``). A request that would have failed (for example
        with 401) gets its error instead, and the fault is used up.

        Args:
            kind: One of :data:`MALFORM_KINDS`.
            times: How many consecutive requests get the wrong answer.

        Raises:
            ValueError: If ``kind`` is unknown or ``times`` is less than 1.
        """
        if kind not in MALFORM_KINDS:
            raise ValueError(
                f"unknown malform kind {kind!r}; expected one of {sorted(MALFORM_KINDS)}"
            )
        self._enqueue(_Fault("malform", malform=kind), times, match)

    def _enqueue(self, fault: _Fault, times: int, match: str | None = None) -> None:
        if not _is_int(times) or times < 1:
            raise ValueError("times must be an integer >= 1")
        if match is not None:
            fault = dataclasses.replace(fault, match=match)
        with self._lock:
            self._faults.extend([fault] * times)

    def _take_fault(self, seen: _Seen) -> _Fault | None:
        """Pop the first queued fault that applies to this request."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.match is None or any(fault.match in d for d in seen.documents):
                    del self._faults[index]
                    return fault
        return None

    # --- request handling (called from handler threads) -------------------------------------

    def _begin_request(self) -> None:
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _end_request(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _sleep(self, seconds: float) -> bool:
        """Wait; False if the server started stopping meanwhile."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)

    def _record(self, path: str, seen: _Seen, reply: _Reply) -> None:
        entry = RecordedRequest(
            path=path,
            model=seen.model,
            query=seen.query,
            documents=seen.documents,
            instruct=seen.instruct,
            top_n=seen.top_n,
            return_documents=seen.return_documents,
            status=reply.status,
            code=reply.code,
            api_key_fingerprint=seen.fingerprint,
            request_id=reply.request_id,
            total_tokens=reply.total_tokens if reply.status == 200 else 0,
            fault=reply.fault,
        )
        with self._lock:
            if reply.status == 200:
                self._ok_requests += 1
                self._documents += reply.documents
                self._tokens += reply.total_tokens
            else:
                self._errors[reply.status] = self._errors.get(reply.status, 0) + 1
            self._log.append(entry)

    def _answer(self, body: bytes | None, authorization: str | None) -> tuple[_Reply, _Seen]:
        payload: object = None
        parse_error: str | None = None
        if body is not None:
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                parse_error = "The request body is not valid JSON."
        seen = _seen_from(payload)
        fault = self._take_fault(seen)
        key = self._presented_key(authorization)
        if key is not None:
            seen.fingerprint = _key_digest(key)[:8]

        if fault is not None and fault.kind == "drop":
            return _Reply(status=0, request_id=str(uuid.uuid4()), fault="drop"), seen
        if fault is not None and fault.kind == "fail":
            headers = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
            reply = _error_reply(
                fault.status, fault.code or "", fault.message or "", headers=headers
            )
            reply.fault = "fail"
            return reply, seen
        if fault is not None and fault.kind == "delay" and not self._sleep(fault.seconds):
            return _Reply(status=0, request_id=str(uuid.uuid4()), fault="shutdown"), seen

        try:
            if body is None:
                raise _ApiError(413, "BadRequest.TooLarge", "Request entity too large.")
            if key is None or (
                self._key_digests is not None and _key_digest(key) not in self._key_digests
            ):
                raise _ApiError(401, "InvalidApiKey", _INVALID_API_KEY)
            if parse_error is not None:
                raise _ApiError(400, "InvalidParameter", parse_error)
            reply, n_documents = self._rerank(payload)
        except _ApiError as error:
            reply = _error_reply(error.status, error.code, error.message)
            if fault is not None:
                reply.fault = fault.label
            return reply, seen
        if fault is not None:
            reply.fault = fault.label
            if fault.kind == "malform" and fault.malform is not None:
                _apply_malform(reply, fault.malform, n_documents)
        return reply, seen

    @staticmethod
    def _presented_key(authorization: str | None) -> bytes | None:
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

    def _rerank(self, payload: object) -> tuple[_Reply, int]:
        if not isinstance(payload, dict):
            raise _ApiError(400, "InvalidParameter", "The request body must be a JSON object.")
        model = payload.get("model")
        if model is None or model == "":
            raise _ApiError(
                400, "BadRequest.EmptyModel", 'Required parameter "model" missing from request.'
            )
        if not isinstance(model, str):
            raise _ApiError(400, "InvalidParameter", "model should be a string.")
        limits = self._limits.get(model)
        if limits is None:
            raise _ApiError(404, "ModelNotFound", "Model not exist.")
        inp = payload.get("input")
        if not isinstance(inp, dict):
            raise _ApiError(
                400, "BadRequest.EmptyInput", 'Required parameter "input" missing from request.'
            )
        query = inp.get("query")
        if query is None or query == "":
            raise _ApiError(
                400, "BadRequest.EmptyInput", 'Required parameter "query" missing from request.'
            )
        if not isinstance(query, str):
            raise _ApiError(400, "InvalidParameter", "query should be a string.: input.query")
        documents = inp.get("documents")
        if documents is None:
            documents = []
        if not isinstance(documents, list):
            raise _ApiError(400, "InvalidParameter", "documents should be a list.: input.documents")
        if not documents or len(documents) > limits.max_documents:
            raise _ApiError(
                400,
                "InvalidParameter",
                "batch size of documents is invalid, it should not be empty or larger than "
                f"{limits.max_documents}",
            )
        for i, document in enumerate(documents):
            if not isinstance(document, str):
                raise _ApiError(
                    400, "InvalidParameter", f"document index:{i} is invalid, it should be a string"
                )
            if not document:
                raise _ApiError(
                    400, "InvalidParameter", "text input should not be empty.: input.documents"
                )
            if len(document) > MAX_DOCUMENT_CHARS:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    f"document index:{i} is invalid, it should not be larger than "
                    f"{MAX_DOCUMENT_CHARS}",
                )
        params = payload.get("parameters")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _ApiError(400, "InvalidParameter", "parameters should be an object.")
        top_n = params.get("top_n")
        if top_n is not None and (not _is_int(top_n) or top_n < 1):
            raise _ApiError(
                400, "InvalidParameter", "top_n should be a positive integer.: parameters.top_n"
            )
        return_documents = params.get("return_documents")
        if return_documents is not None and not isinstance(return_documents, bool):
            raise _ApiError(
                400,
                "InvalidParameter",
                "return_documents should be a boolean.: parameters.return_documents",
            )
        instruct = params.get("instruct")
        if instruct is not None and not isinstance(instruct, str):
            raise _ApiError(
                400, "InvalidParameter", "instruct should be a string.: parameters.instruct"
            )

        item_max = limits.max_item_tokens
        n = len(documents)
        request_tokens = min(count_tokens(query), item_max) * n + sum(
            min(count_tokens(document), item_max) for document in documents
        )
        if request_tokens > limits.max_request_tokens:
            raise _ApiError(
                400,
                "InvalidParameter",
                f"Range of input length should be [1, {limits.max_request_tokens}], "
                f"but got {request_tokens}",
            )
        total_tokens = request_tokens + (count_tokens(instruct) if instruct is not None else 0)

        scores = [score(query, doc, model=model, instruct=instruct) for doc in documents]
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        if top_n is not None:
            order = order[:top_n]
        results: list[dict[str, Any]] = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if return_documents:
                result["document"] = {"text": documents[i]}
            results.append(result)
        request_id = str(uuid.uuid4())
        reply = _Reply(
            status=200,
            request_id=request_id,
            payload={
                "output": {"results": results},
                "usage": {"total_tokens": total_tokens},
                "request_id": request_id,
            },
            documents=n,
            total_tokens=total_tokens,
        )
        return reply, n
