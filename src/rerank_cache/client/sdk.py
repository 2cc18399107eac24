"""The SDK's surroundings: the sync path's connection pool and the async SDK's sessions.

Kept apart from :mod:`.core` so the client reads as fan-out and retries; everything here
imports ``dashscope`` or ``requests`` on first use only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["close_async_sessions", "pooled_session", "prepare_async_sdk"]

#: Idle connections kept per client, at least (threads share a client through with_query).
_MIN_POOL_SIZE = 64


def prepare_async_sdk() -> None:
    """Import the SDK's async client and build its shared TLS context (slow, once)."""
    from dashscope import AioTextReRank  # noqa: F401 - imported for its side effect
    from dashscope.api_entities.aio_session import get_ssl_context

    get_ssl_context()


def pooled_session(max_concurrency: int) -> Any:
    """Return a ``requests.Session`` whose pool holds ``max_concurrency`` connections.

    The SDK's shared pool keeps 10 connections; more requests in flight would open a
    connection each time and throw it away (with a warning from urllib3).
    """
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    # with_query copies share this client across threads: keep room for them.
    size = max(max_concurrency, _MIN_POOL_SIZE)
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


async def close_async_sessions() -> None:
    """Close the SDK's aiohttp session for the running event loop.

    ``dashscope.AioTextReRank`` keeps one pooled session per event loop for connection
    reuse. Await this before an event loop you created ends (for example at the end of an
    ``asyncio.run`` main or a test) so no connection outlives it.
    """
    from dashscope.api_entities.aio_session import close_shared_aio_session

    await close_shared_aio_session()
