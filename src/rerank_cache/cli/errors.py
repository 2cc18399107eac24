"""Exit codes, one-line failures, and stopping cleanly (Ctrl-C, SIGTERM, a closed pipe)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "FailureError",
    "Terminated",
    "err",
    "quiet_stdout",
    "sigterm_as_interrupt",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report


class FailureError(Exception):
    """A failure to report in one line (exit 1)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that warm stops exactly as on Ctrl-C."""


def quiet_stdout() -> None:
    """The reader of stdout went away (``stats | head -2``): stop quietly, as pip does.

    Python flushes stdout once more at exit and would report the broken pipe then; pointing
    the descriptor at the null device makes that flush succeed.
    """
    with contextlib.suppress(OSError, ValueError):  # not a real file: nothing is flushed
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a service manager stopping us) acts like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def err(message: str) -> None:
    print(f"rerank-cache: error: {message}", file=sys.stderr)
