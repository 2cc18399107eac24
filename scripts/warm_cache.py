"""Warm the rerank-cache score store from a JSONL query log.

    python scripts/warm_cache.py INPUT [--cache-dir DIR | --cache-url URL] [--model M]
        [--instruct TEXT] [--field NAME] [--ttl S] [--concurrency N] [--max-rpm N]
        [--dry-run] [--skip-invalid] [--json]

The same options and behaviour as ``rerank-cache warm`` (see docs/cli.md): a thin wrapper
over the library's warming API (:func:`rerank_cache.warm`), through the CLI's ``warm``
command so both stay identical. ``--cache-dir``/``--cache-url`` may appear anywhere, and
``--help`` names this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rerank_cache.cli import warm_main


def main(argv: list[str] | None = None) -> int:
    """Run ``warm`` with this script's name in usage and errors; return its exit code."""
    return warm_main(sys.argv[1:] if argv is None else argv, prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(main())
