"""The command's argument parsers: ``rerank-cache`` and ``warm`` on its own."""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from ..errors import ConfigurationError
from ..serve.command import add_serve_parser
from ..stores.open import resolve_cache_url

__all__ = ["build_parser", "build_warm_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _cache_url(text: str) -> str:
    try:
        resolve_cache_url(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_where(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """Add ``--cache-dir`` / ``--cache-url`` (mutually exclusive) to ``parser``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default,
        help="the cache directory (default: $RERANK_CACHE_DIR, else ~/.cache/rerank-cache)",
    )
    where.add_argument(
        "--cache-url",
        metavar="URL",
        type=_cache_url,
        default=default,
        help="the store as a URL: redis://[:PASSWORD@]HOST:PORT/DB[?namespace=NAME], "
        "rediss:// (TLS), unix:///path/redis.sock, or file:///path/to/dir "
        "(default: $RERANK_CACHE_URL; then the cache directory)",
    )


def _add_warm_arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("input", metavar="INPUT", help="JSONL file, or - for standard input")
    w.add_argument("--model", default="gte-rerank-v2", help="model for lines naming none")
    w.add_argument("--instruct", help="instruct for lines naming none")
    w.add_argument("--field", default="text", help="text field of object documents")
    w.add_argument("--ttl", type=_positive_float, help="seconds the warmed scores stay valid")
    w.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        help="requests in flight at once (default 4)",
    )
    w.add_argument("--max-rpm", type=_positive_float, help="most requests per minute")
    w.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing and change nothing; report what would be sent and its cost",
    )
    w.add_argument(
        "--skip-invalid",
        action="store_true",
        help="report invalid lines and go on instead of stopping",
    )
    w.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``rerank-cache`` command."""
    parser = argparse.ArgumentParser(
        prog="rerank-cache",
        description="Inspect, warm and maintain the rerank-cache score store.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_where(parser, default=None)
    # The same options after the subcommand (`rerank-cache stats --cache-dir X`); SUPPRESS
    # keeps a subcommand that does not repeat them from resetting what came before it.
    where = argparse.ArgumentParser(add_help=False)
    _add_where(where, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    stats = sub.add_parser("stats", parents=[where], help="what the cache holds and what it saved")
    form = stats.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print one JSON object")
    form.add_argument(
        "--prometheus",
        action="store_true",
        help="print the counters in the Prometheus text exposition format (0.0.4)",
    )

    w = sub.add_parser("warm", parents=[where], help="score pairs from a JSONL file into the cache")
    _add_warm_arguments(w)

    clear = sub.add_parser("clear", parents=[where], help="delete cached scores")
    clear.add_argument("--model", help="only this model's scores")
    clear.add_argument("--expired", action="store_true", help="only expired scores")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    check = sub.add_parser("check", parents=[where], help="check the store's integrity")
    check.add_argument(
        "--fix", action="store_true", help="remove unsafe rows; move a damaged file aside"
    )

    export = sub.add_parser(
        "export", parents=[where], help="write every live score as JSON lines (no texts)"
    )
    export.add_argument(
        "output", metavar="PATH", nargs="?", default="-", help="file, or - for stdout (default)"
    )
    export.add_argument("--model", help="only this model's scores")

    imp = sub.add_parser(
        "import", parents=[where], help="load scores written by export, keeping their expiry"
    )
    imp.add_argument("input", metavar="PATH", help="file, or - for standard input")

    sub.add_parser(
        "path",
        parents=[where],
        help="print the cache directory (or the Redis URL, password hidden)",
    )
    add_serve_parser(sub, parents=[where])
    return parser


def build_warm_parser(prog: str) -> argparse.ArgumentParser:
    """Return the parser of ``warm`` as a command of its own (``scripts/warm_cache.py``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Score the (query, document) pairs of a JSONL file into the "
        "rerank-cache score store (the same as `rerank-cache warm`).",
    )
    _add_where(parser, default=None)
    _add_warm_arguments(parser)
    parser.set_defaults(command="warm")
    return parser
