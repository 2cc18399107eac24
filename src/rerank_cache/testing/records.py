"""What the local server observed: its counters and its request log.

:class:`ServerStats` and :class:`RecordedRequest` are public (re-exported by
:mod:`rerank_cache.testing`); :class:`Recorder` keeps them for the server.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .wire import Reply, Seen

__all__ = ["RecordedRequest", "Recorder", "ServerStats"]


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


class Recorder:
    """Counts requests and keeps the latest ones; thread-safe.

    Args:
        log_limit: How many requests the log keeps (the most recent); ``None`` keeps all.
    """

    def __init__(self, log_limit: int | None) -> None:
        self._lock = threading.Lock()
        self._log: deque[RecordedRequest] = deque(maxlen=log_limit)
        self._requests = 0
        self._ok_requests = 0
        self._documents = 0
        self._tokens = 0
        self._errors: dict[int, int] = {}
        self._in_flight = 0
        self._max_in_flight = 0

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count one POST request from its arrival until its answer is sent."""
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def record(self, path: str, seen: Seen, reply: Reply) -> None:
        """Log one answered (or dropped) request and add it to the counters."""
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

    def stats(self) -> ServerStats:
        """A snapshot of the counters."""
        with self._lock:
            return ServerStats(
                requests=self._requests,
                ok_requests=self._ok_requests,
                documents=self._documents,
                tokens=self._tokens,
                errors_by_status=dict(self._errors),
                max_in_flight=self._max_in_flight,
            )

    def log(self) -> list[RecordedRequest]:
        """The logged requests, oldest first (a copy)."""
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """Zero the counters and clear the log; requests in flight stay counted as such."""
        with self._lock:
            self._requests = self._ok_requests = self._documents = self._tokens = 0
            self._errors.clear()
            self._max_in_flight = self._in_flight
            self._log.clear()
