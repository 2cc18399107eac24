"""HTTP plumbing for the local server: threads, connections, reading and writing bodies.

Internal to :mod:`rerank_cache.testing`. Built on :mod:`http.server`; every connection runs
on its own thread, and :meth:`HTTPServer.close_connections` ends them all when the server
stops. What to answer is :class:`~rerank_cache.testing.endpoint.Endpoint`'s business.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Final
from urllib.parse import urlsplit

from .endpoint import Endpoint
from .wire import ApiError, ClientGoneError, Reply, error_reply, not_found_reply

__all__ = ["HTTPServer"]

_DRAIN_CHUNK: Final = 64 * 1024


class HTTPServer(http.server.ThreadingHTTPServer):
    """Threading server that tracks its connections so that stop() can end them promptly.

    Args:
        address: ``(host, port)`` to bind; port 0 picks a free one.
        endpoint: What answers the requests.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], endpoint: Endpoint, *, reuse_port: bool = False
    ) -> None:
        self.endpoint = endpoint
        self._reuse_port = reuse_port
        self._connections_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self._reuse_port:
            # Set here, not through allow_reuse_port, which Python 3.10 lacks.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
        if isinstance(error, OSError) or self.endpoint.stopping.is_set():
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
    server: HTTPServer

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
        reply = error_reply(code, error_code, message or "The request is invalid.")
        reply.close = True
        self._send(reply)

    # --- dispatch ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        """Serve the rerank endpoint; every other path gets a 404 error."""
        arrived = time.monotonic()  # the headers are in: the service time starts
        endpoint = self.server.endpoint
        framing: ApiError | None = None
        body: bytes | None = b""
        try:
            body = self._read_body(endpoint.max_body_bytes)
        except ApiError as error:
            framing = error
        except (ClientGoneError, OSError):
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        with endpoint.recorder.in_flight():
            authorization = self.headers.get("Authorization")
            self._send(endpoint.respond(path, body, framing, authorization, arrived=arrived))

    def _not_found(self) -> None:
        reply = not_found_reply()
        try:
            self._read_body(self.server.endpoint.max_body_bytes)
        except ApiError:
            reply.close = True
        except (ClientGoneError, OSError):
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
            raise ApiError(
                400, "InvalidParameter", "Only requests with a Content-Length are supported."
            )
        raw_length = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw_length.isdigit():
            raise ApiError(400, "InvalidParameter", "Invalid Content-Length header.")
        remaining = int(raw_length)
        if remaining <= limit:
            body = self.rfile.read(remaining)
            if len(body) != remaining:
                raise ClientGoneError
            return body
        while remaining > 0:  # drain, so the client can read our 413 instead of a reset
            chunk = self.rfile.read(min(remaining, _DRAIN_CHUNK))
            if not chunk:
                raise ClientGoneError
            remaining -= len(chunk)
        return None

    def _send(self, reply: Reply) -> None:
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
        if self.command == "HEAD":
            return
        if reply.trickle is None:
            self.wfile.write(body)
            return
        seconds, chunk = reply.trickle
        for start in range(0, len(body), chunk):
            # Stopping the server, or the client hanging up, ends the trickle.
            if start and not self.server.endpoint.wait(seconds):
                self.close_connection = True
                return
            try:
                self.wfile.write(body[start : start + chunk])
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                return
