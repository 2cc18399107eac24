"""The ``rerank-cache serve`` subcommand: its options and its handler.

Kept apart from the server so ``rerank-cache --help`` and the other subcommands never
import aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..urls import redact_url

__all__ = ["add_serve_parser", "run_serve"]


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def add_serve_parser(
    sub: Any, parents: list[argparse.ArgumentParser] | None = None
) -> argparse.ArgumentParser:
    """Add ``serve`` to the command's subparsers (``parents``: the global options)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        parents=parents or [],
        help="run a caching proxy that speaks DashScope's rerank API",
        description="Serve DashScope's rerank API on HOST:PORT, answering from the score "
        "store and sending only uncached pairs upstream. Needs rerank-cache[serve].",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=_positive(int), default=8080, help="port (8080)")
    p.add_argument(
        "--upstream",
        metavar="URL",
        help="DashScope's base address (default: $DASHSCOPE_HTTP_BASE_URL, else "
        "https://dashscope.aliyuncs.com/api/v1)",
    )
    p.add_argument(
        "--tokens-file",
        metavar="FILE",
        help="server-key mode: clients present a token from FILE (one per line) and the "
        "proxy calls DashScope with $DASHSCOPE_API_KEY",
    )
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=60.0,
        help="seconds one request may take, retries included (60)",
    )
    p.add_argument(
        "--max-documents", type=_positive(int), default=500, help="documents per request (500)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=_positive(int),
        default=16 * 1024 * 1024,
        help="largest request body (16 MiB)",
    )
    p.add_argument(
        "--key-ttl",
        type=_positive(float),
        default=900.0,
        help="seconds an accepted key is trusted without asking DashScope (900)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds requests in flight may take to finish at shutdown (30)",
    )
    p.add_argument(
        "--no-access-log", action="store_true", help="do not write the access log to stderr"
    )
    return p


def run_serve(args: argparse.Namespace, target: Path | str) -> int:
    """Serve until SIGTERM or SIGINT; drain, then close the store (flushing its counters)."""
    try:
        from .runner import serve
    except ImportError as exc:
        raise ImportError(
            f"rerank-cache serve needs aiohttp ({exc}): pip install 'rerank-cache[serve]'"
        ) from None
    from rerank_cache import ConfigurationError, ScoreCache

    from .auth import read_tokens
    from .config import ServeConfig, default_upstream

    tokens = server_key = None
    if args.tokens_file:
        try:
            tokens = read_tokens(args.tokens_file)
        except ValueError as exc:
            raise ConfigurationError(f"--tokens-file: {exc}") from None
        server_key = os.environ.get("DASHSCOPE_API_KEY", "").strip() or None
    config = ServeConfig(
        upstream=args.upstream or default_upstream(),
        timeout=args.timeout,
        upstream_timeout=min(30.0, args.timeout),
        max_body_bytes=args.max_body_bytes,
        max_documents=args.max_documents,
        key_ttl=args.key_ttl,
        tokens=tokens,
        server_key=server_key,
    )
    if not args.no_access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("rerank_cache.serve.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    store = ScoreCache.from_url(target)
    try:
        mode = "server-key" if tokens is not None else "pass-through"
        print(
            f"rerank-cache: serving on http://{args.host}:{args.port} "
            f"(upstream {redact_url(config.upstream)}, {mode} credentials)",
            file=sys.stderr,
        )
        asyncio.run(
            serve(
                store,
                config,
                host=args.host,
                port=args.port,
                drain_timeout=args.drain_timeout,
            )
        )
    finally:
        store.close()
    print("rerank-cache: stopped; counters flushed", file=sys.stderr)
    return 0
