"""Warm the rerank-cache score store from a JSONL query log.

    python scripts/warm_cache.py INPUT [--cache-dir DIR | --cache-url URL] [--model M]
        [--instruct TEXT] [--field NAME] [--ttl S] [--concurrency N] [--max-rpm N]
        [--dry-run] [--skip-invalid] [--json]

The same options and behaviour as ``rerank-cache warm`` (see docs/cli.md): a thin wrapper
over the library's warming API (:func:`rerank_cache.warm`), through the CLI's ``warm``
command so both stay identical. ``--cache-dir``/``--cache-url`` may appear anywhere.
"""

from __future__ import annotations

import sys

from rerank_cache.cli import main as cli_main

GLOBAL_OPTIONS = ("--cache-dir", "--cache-url")


def main(argv: list[str] | None = None) -> int:
    """Run ``rerank-cache [global options] warm ARGS``; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    global_args: list[str] = []
    warm_args: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in arg:
                global_args.append(arg)
            else:
                global_args += args[i : i + 2]
                i += 1
        else:
            warm_args.append(arg)
        i += 1
    return cli_main([*global_args, "warm", *warm_args])


if __name__ == "__main__":
    sys.exit(main())
