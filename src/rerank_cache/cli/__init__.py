"""The ``rerank-cache`` command: is the cache working, and what is it saving us?

Subcommands: ``stats``, ``warm``, ``clear``, ``check``, ``path``, ``export``, ``import``,
``serve``. Results go to stdout; diagnostics and progress go to stderr. Exit codes: 0
success, 1 failure, 2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). A
user mistake gives one line on stderr, never a traceback and never the API key. A reader
that goes away (``stats | head -2``) ends the command quietly.

Every command works on either store: a directory (``--cache-dir``, ``$RERANK_CACHE_DIR``)
or a Redis server (``--cache-url redis://...``, ``$RERANK_CACHE_URL``), given before or
after the subcommand; the URL's password never appears in any output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import RerankCacheError
from ..serve.command import run_serve
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    FailureError,
    Terminated,
    err,
    quiet_stdout,
)
from .maintenance import run_check, run_clear, run_path
from .parser import build_parser, build_warm_parser
from .progress import WarmProgress
from .stats import run_stats, stats_json
from .target import resolve_target
from .transfer import run_export, run_import
from .warm import run_warm

__all__ = ["WarmProgress", "build_parser", "build_warm_parser", "main", "stats_json", "warm_main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code."""
    return _run(build_parser(), argv)


def warm_main(argv: Sequence[str] | None = None, *, prog: str = "warm_cache.py") -> int:
    """Run ``warm`` as a command of its own, global options anywhere; return its exit code."""
    return _run(build_warm_parser(prog), argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
        if args.cache_dir and args.cache_url:  # one before the subcommand, one after it
            parser.error("argument --cache-url: not allowed with argument --cache-dir")
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    handler = {
        "stats": run_stats,
        "warm": run_warm,
        "clear": run_clear,
        "check": run_check,
        "path": run_path,
        "export": run_export,
        "import": run_import,
        "serve": run_serve,
    }[args.command]
    try:
        code = handler(args, resolve_target(args))
        sys.stdout.flush()  # a reader gone away shows here, not at exit
        return code
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_OK
    except Terminated:
        err("terminated (SIGTERM); everything finished before it is kept")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        err("interrupted; everything finished before the interruption is kept")
        return EXIT_INTERRUPTED
    except (FailureError, RerankCacheError) as exc:
        err(str(exc))
        return EXIT_FAILURE
    except ImportError as exc:  # a Redis URL without redis-py: the message says what to install
        err(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        err(what)
        return EXIT_FAILURE
