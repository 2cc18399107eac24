"""The local DashScope server: :class:`DashScopeServer`, and its lifecycle and controls.

It puts the other parts together: :mod:`.endpoint` answers requests, :mod:`.httpd` serves
them on a socket, :mod:`.faults` holds injected faults and :mod:`.records` the counters.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Final

from .endpoint import Endpoint
from .faults import Fault, body_fault, delay_fault, error_fault, malform_fault, trickle_fault
from .httpd import HTTPServer
from .limits import ModelLimits, served_limits
from .records import RecordedRequest, ServerStats
from .wire import MAX_BODY_BYTES, RERANK_PATH, key_digest

__all__ = ["DashScopeServer"]

_STOP_JOIN_SECONDS: Final = 5.0


class DashScopeServer:
    """A local DashScope TextReRank server on ``127.0.0.1`` and a random port.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`) and point the SDK at
    :attr:`base_url`. It is single-use: once stopped it cannot be started again.

    Args:
        api_keys: Keys to accept. ``None`` accepts any non-empty key; an empty iterable
            accepts none. Only SHA-256 digests of the keys are kept.
        latency: Seconds from a request's arrival to its answer, to simulate the
            service's latency. Like a remote service's, it includes the work of answering:
            only what the scoring left of it is waited out. Also settable later through
            the :attr:`latency` attribute.
        max_documents: Per-model override of the most documents accepted per request.
        models: Extra models, or replacement limits for known ones (see :data:`MODEL_LIMITS`).
        max_body_bytes: Largest accepted request body; larger ones get 413.
        log_limit: How many requests :attr:`requests_log` keeps (the most recent ones);
            ``None`` keeps all.
        host: The interface to bind.
        port: The port to bind; 0 picks a free one.
        reuse_port: Let other servers (in other processes) bind the same port with
            ``SO_REUSEPORT``; the kernel then spreads new connections between them, as a
            service spreads requests over machines. Where the platform has it (Linux).

    Raises:
        TypeError: If ``api_keys`` is a single string.
        ValueError: If a limit, the latency or a key is invalid.
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
        reuse_port: bool = False,
    ) -> None:
        if isinstance(api_keys, (str, bytes)):
            raise TypeError("api_keys must be an iterable of keys, not a single string")
        if latency < 0 or not math.isfinite(latency):
            raise ValueError("latency must be a finite number of seconds >= 0")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if log_limit is not None and log_limit < 0:
            raise ValueError("log_limit must be >= 0 or None")
        key_digests: frozenset[str] | None = None
        if api_keys is not None:
            keys = list(api_keys)
            if any(not isinstance(key, str) or not key for key in keys):
                raise ValueError("api_keys must contain non-empty strings only")
            key_digests = frozenset(key_digest(key.encode("utf-8")) for key in keys)
        self._endpoint = Endpoint(
            limits=served_limits(models, max_documents),
            key_digests=key_digests,
            latency=float(latency),
            max_body_bytes=max_body_bytes,
            log_limit=log_limit,
        )
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._lock = threading.Lock()  # guards the lifecycle: start once, stop once
        self._httpd: HTTPServer | None = None
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
            self._httpd = HTTPServer(
                (self._host, self._port), self._endpoint, reuse_port=self._reuse_port
            )
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
        self._endpoint.stopping.set()
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
        return self._endpoint.limits

    @property
    def latency(self) -> float:
        """Seconds from a request's arrival to its answer, scoring included (thread-safe
        to change at any time)."""
        return self._endpoint.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._endpoint.latency = seconds

    @property
    def max_body_bytes(self) -> int:
        """Largest accepted request body; larger ones get 413 ``BadRequest.TooLarge``."""
        return self._endpoint.max_body_bytes

    @max_body_bytes.setter
    def max_body_bytes(self, size: int) -> None:
        self._endpoint.max_body_bytes = size

    # --- observation -------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters (see :class:`ServerStats`)."""
        return self._endpoint.recorder.stats()

    @property
    def requests_log(self) -> list[RecordedRequest]:
        """The recorded POST requests, in the order they were answered (a copy)."""
        return self._endpoint.recorder.log()

    def reset_stats(self) -> None:
        """Zero the counters and clear the request log (pending faults are kept)."""
        self._endpoint.recorder.reset()

    # --- fault injection ---------------------------------------------------------------------

    @property
    def pending_faults(self) -> int:
        """How many injected faults are still waiting for a request."""
        return len(self._endpoint.faults)

    def clear_faults(self) -> None:
        """Forget every pending injected fault."""
        self._endpoint.faults.clear()

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
        fault = error_fault(status, code=code, message=message, retry_after=retry_after)
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
        self._enqueue(Fault("drop"), times, match)

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
        self._enqueue(delay_fault(seconds), times, match)

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
        self._enqueue(malform_fault(kind), times, match)

    def respond_next(
        self, status: int, body: object, times: int = 1, *, match: str | None = None
    ) -> None:
        """Answer the next ``times`` rerank requests with ``status`` and exactly ``body``.

        For answers no other fault produces: a 200 whose score is an integer too large for
        a float, a negative ``usage.total_tokens``, an error body without a code. The
        request is not checked (a bad key still gets ``body``).

        Args:
            status: The HTTP status, 200-599.
            body: Any JSON-serialisable value (integers of any size, ``NaN`` included),
                sent as ``application/json``; ``bytes`` are sent as they are.
            times: How many consecutive requests get this answer.

        Raises:
            ValueError: If ``status`` or ``times`` is invalid, or ``body`` is not JSON.
        """
        self._enqueue(body_fault(status, body), times, match)

    def trickle_next(
        self, seconds: float, times: int = 1, *, chunk: int = 1, match: str | None = None
    ) -> None:
        """Answer the next ``times`` rerank requests normally, but send the body slowly.

        The status line and headers go at once; then the body, ``chunk`` bytes every
        ``seconds``. Each read is quick, so a per-read client timeout never fires: this
        tests that a whole response is bounded. :meth:`stop` ends the trickle.

        Args:
            seconds: Pause between chunks of the body.
            times: How many consecutive requests are trickled.
            chunk: Bytes sent per pause.

        Raises:
            ValueError: If ``seconds``, ``chunk`` or ``times`` is invalid.
        """
        self._enqueue(trickle_fault(seconds, chunk), times, match)

    def _enqueue(self, fault: Fault, times: int, match: str | None) -> None:
        self._endpoint.faults.add(fault, times, match)
