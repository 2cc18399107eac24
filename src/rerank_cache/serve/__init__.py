"""``rerank-cache serve``: a caching proxy that speaks DashScope's rerank wire format.

Point any DashScope client at it (``DASHSCOPE_HTTP_BASE_URL=http://proxy:8080/api/v1``) and
every service, in any language, shares one per-pair score cache. Needs the ``serve`` extra
(aiohttp): ``pip install 'rerank-cache[serve]'``. See docs/proxy.md.

Modules: :mod:`.wire` (DashScope's request and response shapes, pure), :mod:`.auth`
(credentials), :mod:`.metrics` (Prometheus text), :mod:`.config`, :mod:`.app` (the aiohttp
application), :mod:`.runner` (running it), :mod:`.command` (the CLI subcommand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import COMPATIBLE_PATH, NATIVE_PATH, Proxy
    from .auth import AcceptedKeys, TokenSet, read_tokens
    from .config import ServeConfig
    from .runner import ProxyServer, serve

__all__ = [
    "COMPATIBLE_PATH",
    "NATIVE_PATH",
    "AcceptedKeys",
    "Proxy",
    "ProxyServer",
    "ServeConfig",
    "TokenSet",
    "read_tokens",
    "serve",
]

_HOMES = {
    "COMPATIBLE_PATH": "app",
    "NATIVE_PATH": "app",
    "Proxy": "app",
    "AcceptedKeys": "auth",
    "TokenSet": "auth",
    "read_tokens": "auth",
    "ServeConfig": "config",
    "ProxyServer": "runner",
    "serve": "runner",
}


def __getattr__(name: str) -> Any:
    # The CLI imports .command to list its options; aiohttp is imported only when a name
    # that needs it is used, so `rerank-cache stats` stays quick to start.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
