"""``warm``'s progress display: a ``rich`` bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from ..warm import LineWarmed
from .units import duration, plural, size_text

__all__ = ["WarmProgress"]


class WarmProgress:
    """``warm``'s progress on stderr, drawn from the library's per-line events.

    On a terminal, a ``rich`` bar over the input's bytes (a spinner when the size is not
    known, as on a pipe) with counts, pairs per second and the time left; the bar's last
    state is the final count. Elsewhere (cron, CI), one plain line every ``interval``
    seconds.

    Args:
        stream: where to draw (the CLI passes stderr).
        total_bytes: the input's size when known; the bar and ETA follow bytes read.
        dry_run: counts pairs "to send" instead of "scored".
        clock: monotonic seconds; default ``time.monotonic`` (looked up when the display is
            made, so freezegun drives it in tests).
        interval: seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        total_bytes: int | None = None,
        dry_run: bool = False,
        clock: Callable[[], float] | None = None,
        interval: float = 10.0,
    ) -> None:
        self.stream = stream
        self.total_bytes = total_bytes
        self.dry_run = dry_run
        self.clock = clock or time.monotonic
        self.interval = interval
        self.bytes_read = 0
        self.lines = self.pairs = self.cached = self.scored = self.requests = 0
        self.started = self.last_line = self.clock()
        self._bar: Any = None
        self._task: Any = None
        if stream.isatty():
            self._start_bar()

    def _start_bar(self) -> None:
        # Imported here: only warm on a terminal draws a bar; stats stays quick to start.
        from rich.console import Console, RenderableType
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        owner = self

        class Bar(Progress):
            """The bar and rate on one line, the counts below (80 columns fit both)."""

            def get_renderables(self) -> Iterator[RenderableType]:
                yield self.make_tasks_table(self.tasks)
                yield Text(owner.counts(rate=False), no_wrap=True, overflow="ellipsis")

        columns: list[str | ProgressColumn] = [TextColumn("warming")]
        if self.total_bytes is None:
            columns += [SpinnerColumn()]
        else:
            columns += [BarColumn(), TaskProgressColumn()]
        columns += [TextColumn("{task.description}")]
        if self.total_bytes is not None:
            columns += [TextColumn("ETA"), TimeRemainingColumn()]
        self._bar = Bar(
            *columns,
            console=Console(file=self.stream),
            get_time=self.clock,
            redirect_stdout=False,  # stdout carries the summary, printed after the bar
        )
        self._task = self._bar.add_task(self.rate(), total=self.total_bytes)
        self._bar.start()

    def reader(self, source: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``source``'s lines through, counting their bytes for the bar."""
        for line in source:
            self.bytes_read += len(line)
            yield line

    def rate(self) -> str:
        """Pairs per second so far."""
        elapsed = self.clock() - self.started
        return f"{self.pairs / elapsed:,.0f} pairs/s" if elapsed > 0 else "- pairs/s"

    def counts(self, *, rate: bool = True) -> str:
        """The counts so far: lines, pairs, cached, scored (or to send), requests, rate."""
        sent = f"{self.scored:,} to send" if self.dry_run else f"{self.scored:,} scored"
        parts = [
            plural(self.lines, "line"),
            plural(self.pairs, "pair"),
            f"{self.cached:,} cached",
            sent,
            *([] if self.dry_run else [plural(self.requests, "request")]),
            *([self.rate()] if rate else []),
        ]
        return " \u00b7 ".join(parts)

    def update(self, event: LineWarmed) -> None:
        """Count a finished line; redraw, or log a plain line when ``interval`` has passed."""
        self.lines += 1
        self.pairs += event.pairs
        self.cached += event.cached
        self.scored += event.scored
        self.requests += event.requests
        if self._bar is not None:
            self._bar.update(self._task, completed=self.bytes_read, description=self.rate())
            return
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            print(f"rerank-cache: warming: {self.plain()}", file=self.stream, flush=True)

    def plain(self) -> str:
        """The plain progress line: share of the input read, counts, time left."""
        text = self.counts()
        if self.total_bytes:
            share = min(self.bytes_read / self.total_bytes, 1.0)
            text = f"{share:.0%} of {size_text(self.total_bytes)} read \u00b7 {text}"
            elapsed = self.clock() - self.started
            if 0 < share < 1 and elapsed > 0:
                text += f" \u00b7 ETA {duration(elapsed * (1 - share) / share)}"
        return text

    def note(self, message: str) -> None:
        """Print a line (a skipped input line) above the bar, or on its own."""
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=self.stream, flush=True)

    def finish(self, *, complete: bool) -> None:
        """End the display: on ``complete``, the bar's last state is the final count; when
        interrupted, it stays where it was and the cursor moves to a line of its own."""
        if self._bar is None:
            return
        done = self.total_bytes if complete and self.total_bytes is not None else self.bytes_read
        self._bar.update(self._task, completed=done, description=self.rate())
        self._bar.stop()
        self._bar = None
