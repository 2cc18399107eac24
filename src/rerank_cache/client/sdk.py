"""The SDK's surroundings: the sync path's connection pool and the async SDK's sessions.

Kept apart from :mod:`.core` so the client reads as fan-out and retries; everything here
imports ``dashscope`` or ``requests`` on first use only.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Any

__all__ = ["MIN_POOL_SIZE", "close_async_sessions", "pooled_session", "prepare_async_sdk"]

#: Idle connections (and request threads) kept per client, at least: threads share a
#: client through with_query.
MIN_POOL_SIZE = 64


def prepare_async_sdk() -> None:
    """Import the SDK's async client and build its shared TLS context (slow, once)."""
    from dashscope import AioTextReRank  # noqa: F401 - imported for its side effect
    from dashscope.api_entities.aio_session import get_ssl_context

    get_ssl_context()


def pooled_session(max_concurrency: int) -> Any:
    """Return a ``requests.Session`` whose pool holds ``max_concurrency`` connections.

    The SDK's shared pool keeps 10 connections; more requests in flight would open a
    connection each time and throw it away (with a warning from urllib3). Its adapter
    bounds each whole response by the request's timeout (see :func:`_bounded_adapter_class`).
    """
    import requests

    session = requests.Session()
    # Any auth set here stops requests from reading ~/.netrc on every request (two stat
    # calls each) and, worse, from replacing the SDK's API key header with a netrc login
    # for the host. The key header is all the authentication DashScope takes.
    session.auth = _keep_request
    # with_query copies share this client across threads: keep room for them.
    size = max(max_concurrency, MIN_POOL_SIZE)
    adapter = _bounded_adapter_class()(pool_connections=1, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _keep_request(request: Any) -> Any:
    """An auth hook that leaves the request as the SDK built it."""
    return request


async def close_async_sessions() -> None:
    """Close the SDK's aiohttp session for the running event loop.

    ``dashscope.AioTextReRank`` keeps one pooled session per event loop for connection
    reuse. Await this before an event loop you created ends (for example at the end of an
    ``asyncio.run`` main or a test) so no connection outlives it.
    """
    from dashscope.api_entities.aio_session import close_shared_aio_session

    await close_shared_aio_session()


#: Bytes asked for per read while a body arrives; read1 returns what is there.
_READ_SIZE = 64 * 1024


@functools.cache
def _bounded_adapter_class() -> Any:
    """An ``HTTPAdapter`` that bounds the whole response, not each read, by the timeout.

    ``requests``' timeout bounds each socket read: a server that sends a byte just before
    every read times out keeps a call forever. This adapter reads the body itself before it
    returns, one ``read1`` at a time, with each read's socket timeout cut to what remains
    of the request's timeout; past it, ``ReadTimeout`` (our ``RequestTimeoutError``). The
    body is then served from memory, with the original headers, so ``requests`` decodes
    it as usual. No thread is started, so nothing can be left behind stuck.

    Only the body is bounded this way; the status line and headers stay bounded per read.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.response import HTTPResponse

    class BoundedAdapter(HTTPAdapter):
        def send(  # type: ignore[override]
            self, request: Any, stream: bool = False, timeout: Any = None, **kwargs: Any
        ) -> Any:
            budget = timeout[-1] if isinstance(timeout, tuple) else timeout
            started = time.monotonic()
            response = super().send(request, stream=stream, timeout=timeout, **kwargs)
            if not isinstance(budget, (int, float)):
                return response  # no timeout given: nothing to bound
            raw = response.raw
            body = _read_within(raw, started + budget, request.url, requests)
            replay = HTTPResponse(
                body=io.BytesIO(body),
                headers=raw.headers,
                status=raw.status,
                reason=raw.reason,
                preload_content=False,
                decode_content=False,
            )
            return self.build_response(request, replay)

    return BoundedAdapter


def _read_within(raw: Any, deadline: float, url: str, requests: Any) -> bytes:
    """The whole undecoded body of ``raw``, or ``ReadTimeout`` once ``deadline`` passes.

    Read errors come out as ``requests``' own exceptions, as they would from ``requests``.
    """
    import urllib3

    read1 = getattr(raw, "read1", None)  # urllib3 2; 1.26 reads a byte at a time
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    chunks: list[bytes] = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise requests.exceptions.ReadTimeout(
                    f"the whole response took longer than the timeout ({url})"
                )
            if sock is not None:
                sock.settimeout(remaining)
            chunk = (
                read1(_READ_SIZE, decode_content=False)
                if read1
                else raw.read(1, decode_content=False)
            )
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except requests.exceptions.RequestException:  # our own ReadTimeout (an OSError too)
        raw.close()
        raise
    except (TimeoutError, urllib3.exceptions.TimeoutError) as exc:
        raw.close()  # a half-read connection must not go back to the pool
        raise requests.exceptions.ReadTimeout(f"reading the response timed out ({url})") from exc
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raw.close()
        raise requests.exceptions.ConnectionError(f"the response was cut off ({url})") from exc
    except BaseException:
        raw.close()
        raise
    finally:
        raw.release_conn()
