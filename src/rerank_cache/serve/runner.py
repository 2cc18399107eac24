"""Running the proxy: until a signal (the command), or in a background thread (tests, docs).

Shutdown drains: the listening socket closes first, requests in flight get up to
``drain_timeout`` seconds to finish, then the SDK's connections close. The store is closed
by whoever opened it, after the drain, so its counters are flushed last.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from aiohttp import web

from rerank_cache import ScoreStore

from .app import NATIVE_PATH, Proxy
from .config import ServeConfig

__all__ = ["ProxyServer", "serve"]

#: Threads for the store's blocking calls: every request does one or two, and the
#: default pool (CPU count + 4) would queue them behind each other under load.
_STORE_THREADS = 32


async def _start(
    proxy: Proxy, host: str, port: int, drain_timeout: float
) -> tuple[web.AppRunner, int]:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(_STORE_THREADS, thread_name_prefix="rerank-serve"))
    runner = web.AppRunner(proxy.app(), access_log=None, shutdown_timeout=drain_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
            break
    return runner, bound


async def serve(
    store: ScoreStore,
    config: ServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    drain_timeout: float = 30.0,
    stop: asyncio.Event | None = None,
    on_ready: threading.Event | None = None,
) -> None:
    """Serve the proxy until ``stop`` is set, or until SIGTERM or SIGINT when it is None.

    Args:
        store: the score store (not closed here).
        config: the proxy's settings.
        host: the interface to listen on.
        port: the port (0 picks a free one).
        drain_timeout: seconds requests in flight may take to finish at shutdown.
        stop: set it to shut down; None installs SIGTERM and SIGINT handlers instead.
        on_ready: set once the socket is listening.
    """
    proxy = Proxy(store, config)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    runner, _ = await _start(proxy, host, port, drain_timeout)
    if on_ready is not None:
        on_ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


class ProxyServer:
    """The proxy on a background thread with its own event loop (for tests and examples).

    Args:
        store: the score store (not closed here).
        config: the proxy's settings.
        host: the interface to listen on.
        port: the port; 0 (the default) picks a free one.

    Example:
        >>> import tempfile
        >>> from rerank_cache import ScoreCache
        >>> from rerank_cache.serve import ProxyServer, ServeConfig
        >>> with ScoreCache(tempfile.mkdtemp()) as store, ProxyServer(
        ...     store, ServeConfig(upstream="http://127.0.0.1:9/api/v1")
        ... ) as proxy:
        ...     proxy.base_url.startswith("http://127.0.0.1:")
        True
    """

    def __init__(
        self,
        store: ScoreStore,
        config: ServeConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._proxy = Proxy(store, config)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"ProxyServer(origin={self.origin!r})"

    @property
    def proxy(self) -> Proxy:
        """The application (its :attr:`Proxy.metrics` among others)."""
        return self._proxy

    @property
    def origin(self) -> str:
        """``http://host:port``: prefix of ``/healthz``, ``/metrics`` and the OpenAI-style route."""
        return f"http://{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        """The base address to give the SDK (``base_address=`` or DASHSCOPE_HTTP_BASE_URL)."""
        return f"{self.origin}/api/v1"

    @property
    def url(self) -> str:
        """The full URL of the native rerank endpoint (as :attr:`DashScopeServer.url`)."""
        return f"{self.origin}{NATIVE_PATH}"

    def start(self) -> None:
        """Listen, and serve on a background thread; returns once the socket is open."""
        if self._thread is not None:
            raise RuntimeError("ProxyServer was already started")
        self._thread = threading.Thread(target=self._run, name="rerank-cache-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to start() or dropped at stop
            self._error = exc
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        runner, self._port = await _start(self._proxy, self._host, self._port, 5.0)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        """Drain and stop; idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join()

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
