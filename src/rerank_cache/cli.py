"""The ``rerank-cache`` command: is the cache working, and what is it saving us?

Subcommands: ``stats``, ``warm``, ``clear``, ``check``, ``path``. Results go to stdout;
diagnostics and progress go to stderr. Exit codes: 0 success, 1 failure, 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). A user mistake gives one line on stderr,
never a traceback and never the API key. A reader that goes away (``stats | head -2``) ends
the command quietly.

Every command works on either store: a directory (``--cache-dir``, ``$RERANK_CACHE_DIR``)
or a Redis server (``--cache-url redis://...``, ``$RERANK_CACHE_URL``), given before or
after the subcommand; the URL's password never appears in any output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigurationError, CorruptCacheError, DashScopeError, RerankCacheError
from .pricing import CURRENCY, PRICE_PER_MILLION_TOKENS, estimate_cost
from .serve.command import add_serve_parser, run_serve
from .stores.base import AdminStore, ScoreStore
from .stores.disk import ScoreCache, read_stats
from .stores.open import default_cache_dir, resolve_cache_url
from .stores.stats import CacheStats, CheckReport
from .warm import InvalidLineError, LineSkipped, LineWarmed, WarmSummary, warm

if TYPE_CHECKING:
    from .stores.redis import RedisScoreCache

__all__ = ["WarmProgress", "main", "stats_json", "warm_main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report
#: Where the store is: a cache directory, or the URL of a Redis server.
Target = Path | str


class _FailureError(Exception):
    """A failure to report in one line (exit 1)."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that warm stops exactly as on Ctrl-C."""


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
    stats.add_argument("--json", action="store_true", help="print one JSON object")

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
        "stats": _stats,
        "warm": _warm,
        "clear": _clear,
        "check": _check,
        "path": _path,
        "serve": run_serve,
    }[args.command]
    try:
        code = handler(args, _target(args))
        sys.stdout.flush()  # a reader gone away shows here, not at exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except _Terminated:
        _err("terminated (SIGTERM); everything finished before it is kept")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _err("interrupted; everything finished before the interruption is kept")
        return EXIT_INTERRUPTED
    except (_FailureError, RerankCacheError) as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except ImportError as exc:  # a Redis URL without redis-py: the message says what to install
        _err(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        _err(what)
        return EXIT_FAILURE


def _quiet_stdout() -> None:
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
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a service manager stopping us) acts like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _err(message: str) -> None:
    print(f"rerank-cache: error: {message}", file=sys.stderr)


def _target(args: argparse.Namespace) -> Target:
    """The store: ``--cache-dir``, ``--cache-url``, ``$RERANK_CACHE_URL``, else the default dir."""
    if args.cache_dir:
        return Path(os.path.abspath(Path(args.cache_dir).expanduser()))
    url = args.cache_url or os.environ.get("RERANK_CACHE_URL", "").strip()
    if not url:
        return Path(os.path.abspath(default_cache_dir()))
    try:
        return resolve_cache_url(url)
    except ConfigurationError as exc:
        raise _FailureError(f"RERANK_CACHE_URL / --cache-url: {exc}") from None


def _open_redis(url: str, *, ping: bool = True, **kwargs: Any) -> RedisScoreCache:
    """Open a Redis store; unless ``ping`` is false, fail in one line if it cannot be reached."""
    from .stores.redis import RedisScoreCache  # needs the optional redis-py

    store = RedisScoreCache(url, **kwargs)
    if ping:
        try:
            store.ping()
        except BaseException:
            store.close()
            raise
    return store


def _open_store(target: Target, **kwargs: Any) -> tuple[AdminStore, str]:
    """Open the store at ``target``; return it and where it is, for messages."""
    if isinstance(target, str):
        store = _open_redis(target, **kwargs)
        return store, store.location
    return ScoreCache(target, **kwargs), str(target)


# -- an unwritable cache directory ----------------------------------------------------------

# Linux's FS_IOC_GETFLAGS, _IOR('f', 1, long), and its immutable and append-only flags.
_FS_IOC_GETFLAGS = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _immutable(path: Path) -> bool:
    """Whether ``path`` carries an immutable or append-only attribute (chattr / chflags)."""
    flags = getattr(os.stat(path), "st_flags", 0)  # BSD and macOS
    if flags & (getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0)):
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (ImportError, OSError):
        return False
    try:
        (value,) = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])
    except OSError:  # a file system without attributes
        return False
    finally:
        os.close(fd)
    return bool(value & (_FS_IMMUTABLE_FL | _FS_APPEND_FL))


def _unwritable(directory: Path) -> str | None:
    """Why the cache in ``directory`` cannot be written, and what to do; None if it can.

    A directory that does not exist yet is judged by the nearest existing parent, where it
    would be created. Writers would fail open on every write (stores nothing, counts
    nothing), so commands refuse such a cache rather than report it as empty.
    """
    existing = directory
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    checks = [existing]
    if existing == directory:
        checks += [p for p in (directory / "cache.db",) if os.path.lexists(p)]
    for path in checks:
        need = os.W_OK | (os.X_OK if path.is_dir() else 0)
        if os.access(path, need):
            continue
        role = "the cache directory" if path == directory else "the cache file"
        if path != directory and path.is_dir():
            role = f"{path}, where the cache directory {directory} would be created,"
        else:
            role = f"{role} {path}"
        try:
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        if read_only:
            return (
                f"{role} is on a read-only file system. Remount it read-write, or point "
                "--cache-dir (or RERANK_CACHE_DIR) at a writable directory."
            )
        if _immutable(path):
            return (
                f"{role} is immutable (chattr +i or chflags). Remove the flag: "
                f"sudo chattr -i {path} (macOS: chflags nouchg {path}), or use another directory."
            )
        info = os.stat(path)
        mode = stat.S_IMODE(info.st_mode)
        fix = f"chmod 700 {path}" if path.is_dir() else f"chmod 600 {path}"
        return (
            f"{role} is not writable: permission denied (mode {mode:o}, owner uid "
            f"{info.st_uid}). Run: {fix}"
        )
    return None


def _require_writable(target: Target) -> None:
    if isinstance(target, Path):
        problem = _unwritable(target)
        if problem is not None:
            raise _FailureError(problem)


# -- stats -------------------------------------------------------------------------------


def _saved(stats_hits: int, tokens: int, documents: int) -> int:
    """Estimate tokens saved by hits: hits times the average billed tokens per document."""
    return round(stats_hits * tokens / documents) if documents else 0


def stats_json(stats: CacheStats) -> dict[str, Any]:
    """Return the ``stats --json`` object: schema version, totals, per-model breakdown."""
    models: dict[str, Any] = {}
    saved_tokens = 0
    saved_cost = 0.0
    for name, m in stats.models.items():
        if not name:
            continue  # counters not tied to a model (store errors)
        tokens = _saved(m.hits, m.tokens_billed, m.documents_sent)
        cost = estimate_cost(name, tokens)
        saved_tokens += tokens
        saved_cost += cost or 0.0
        models[name] = {
            **m.model_dump(),
            "hit_rate": m.hit_rate,
            "estimated_tokens_saved": tokens,
            "estimated_cost_saved": cost,
        }

    def when(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "schema_version": stats.schema_version,
        "directory": stats.directory,
        "entries": stats.entries,
        "expired_entries": stats.expired_entries,
        "size_bytes": stats.size_bytes,
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_rate": stats.hit_rate,
        "api_requests": stats.api_requests,
        "documents_sent": stats.documents_sent,
        "tokens_billed": stats.tokens_billed,
        "estimated_tokens_saved": saved_tokens,
        "estimated_cost_saved": round(saved_cost, 6),
        "currency": CURRENCY,
        "duplicate_sends": stats.duplicate_sends,
        "store_errors": stats.store_errors,
        "fallbacks": stats.fallbacks,
        "oldest_entry": when(stats.oldest_entry),
        "newest_entry": when(stats.newest_entry),
        "models": models,
    }


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _hit_rate(counts: dict[str, Any]) -> str:
    """The hit rate as a percentage; a dash when nothing was looked up (0 % would alarm)."""
    return f"{counts['hit_rate']:.1%}" if counts["hits"] + counts["misses"] else "\u2014"


def _stats(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        # Read-only: nothing is written (no counters are pending in a fresh store).
        with _open_redis(target, ping=False) as redis_store:
            stats = redis_store.stats()
        size_label = "memory (whole Redis)"
    else:
        # Every application would fail open on it: an empty table would say "fine".
        _require_writable(target)
        stats = read_stats(target)
        size_label = "size on disk"
    data = stats_json(stats)
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    out = sys.stdout
    if isinstance(target, Path) and not os.path.lexists(target):
        print(f"(no cache at {target} yet)", file=sys.stderr)

    def row(label: str, value: str) -> None:
        print(f"  {label:<26}{value}", file=out)

    def when(t: str | None) -> str:
        return t.replace("T", " ")[:19] + " UTC" if t else "-"

    print(f"rerank-cache {data['directory']}", file=out)
    row("entries", f"{data['entries']:,} live, {data['expired_entries']:,} expired")
    row(size_label, _size(data["size_bytes"]))
    row("oldest / newest entry", f"{when(data['oldest_entry'])} / {when(data['newest_entry'])}")
    row("hits", f"{data['hits']:,}")
    row("misses", f"{data['misses']:,}")
    row("hit rate", _hit_rate(data))
    row("API requests", f"{data['api_requests']:,}")
    row("documents sent", f"{data['documents_sent']:,}")
    row("tokens billed", f"{data['tokens_billed']:,}")
    row("tokens saved (estimate)", f"{data['estimated_tokens_saved']:,}")
    row("cost saved (estimate)", f"{data['estimated_cost_saved']:.4f} {CURRENCY}")
    row("duplicate sends", f"{data['duplicate_sends']:,}")
    row("store errors", f"{data['store_errors']:,}")
    row("fallbacks", f"{data['fallbacks']:,}")
    if data["models"]:
        print(file=out)
        header = (
            "model",
            "entries",
            "hits",
            "misses",
            "hit rate",
            "requests",
            "docs sent",
            "tokens",
            "saved (est)",
        )
        rows = [header] + [
            (
                name,
                f"{m['entries']:,}",
                f"{m['hits']:,}",
                f"{m['misses']:,}",
                _hit_rate(m),
                f"{m['api_requests']:,}",
                f"{m['documents_sent']:,}",
                f"{m['tokens_billed']:,}",
                f"{m['estimated_tokens_saved']:,}",
            )
            for name, m in data["models"].items()
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            cells = [r[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
            ]
            print("  " + "  ".join(cells), file=out)
    return EXIT_OK


# -- warm --------------------------------------------------------------------------------


def _n(count: int, word: str) -> str:
    """``1 line``, ``2 lines``: a count and its noun, in the right number."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


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
            _n(self.lines, "line"),
            _n(self.pairs, "pair"),
            f"{self.cached:,} cached",
            sent,
            *([] if self.dry_run else [_n(self.requests, "request")]),
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
            text = f"{share:.0%} of {_size(self.total_bytes)} read \u00b7 {text}"
            elapsed = self.clock() - self.started
            if 0 < share < 1 and elapsed > 0:
                text += f" \u00b7 ETA {_duration(elapsed * (1 - share) / share)}"
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


@contextlib.contextmanager
def _open_input(name: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """Open the input; yield it and its size in bytes when known (a file, not a pipe)."""
    if name == "-":
        yield sys.stdin.buffer, _size_of(sys.stdin.buffer)
        return
    path = Path(name)
    if path.is_dir():
        raise _FailureError(f"{name} is a directory, not a JSONL file")
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise _FailureError(f"no such file: {name}") from None
    except PermissionError:
        raise _FailureError(f"cannot read {name}: permission denied") from None
    with handle:
        yield handle, _size_of(handle)


def _size_of(handle: IO[bytes]) -> int | None:
    try:
        info = os.fstat(handle.fileno())
    except (OSError, ValueError):  # not a real file (io.BytesIO in tests, say)
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


@contextlib.contextmanager
def _warm_store(target: Target, args: argparse.Namespace) -> Iterator[ScoreStore]:
    """The store to warm; for a dry run, one that changes nothing on disk.

    A dry run only reads scores. A directory holding no cache yet cannot hold any of the
    pairs, so the lookups go to an empty cache in a throwaway directory instead of creating
    one where the user pointed.
    """
    # No memory tier: a warm run reads each pair once, so memory would only add to its RSS.
    kwargs: dict[str, Any] = {"memory_entries": 0}
    if args.ttl is not None:
        kwargs["ttl"] = args.ttl
    if args.dry_run and isinstance(target, Path) and not (target / "cache.db").exists():
        with (
            tempfile.TemporaryDirectory(prefix="rerank-cache-dry-run-") as scratch,
            ScoreCache(Path(scratch) / "empty", **kwargs) as empty,
        ):
            yield empty
        return
    if not args.dry_run:
        _require_writable(target)
    with contextlib.closing(_open_store(target, **kwargs)[0]) as cache:
        yield cache


def _warm(args: argparse.Namespace, target: Target) -> int:
    if not args.dry_run and not os.environ.get("DASHSCOPE_API_KEY", "").strip():
        raise _FailureError("no DashScope API key: set DASHSCOPE_API_KEY (or use --dry-run)")
    summary: WarmSummary | None = None
    with (
        _open_input(args.input) as (source, size),
        _warm_store(target, args) as cache,
        _sigterm_as_interrupt(),
    ):
        progress = WarmProgress(sys.stderr, total_bytes=size, dry_run=args.dry_run)
        try:
            for event in warm(
                progress.reader(source),
                cache,
                model=args.model,
                instruct=args.instruct,
                field=args.field,
                concurrency=args.concurrency,
                max_rpm=args.max_rpm,
                dry_run=args.dry_run,
                skip_invalid=args.skip_invalid,
            ):
                if isinstance(event, LineWarmed):
                    progress.update(event)
                elif isinstance(event, LineSkipped):
                    progress.note(f"rerank-cache: skipped line {event.line}: {event.problem}")
                else:
                    summary = event
        except InvalidLineError as exc:
            raise _FailureError(
                f"{exc}. Every line before it is warmed; fix the line or pass --skip-invalid."
            ) from None
        except DashScopeError as exc:
            raise _FailureError(
                f"{exc} Every request that completed is stored; re-run to resume."
            ) from None
        finally:
            # Before any message: the bar's line ends, so the message gets its own.
            progress.finish(complete=summary is not None)
    assert summary is not None
    _print_summary(summary, args.json)
    unpriced = [m for m, cost in summary.estimated_cost.items() if cost is None]
    if unpriced:
        print(
            f"rerank-cache: warning: unknown model {', '.join(unpriced)}: no list price, so "
            "the estimated cost leaves it out; check the name (DashScope refuses models it "
            f"does not serve). Known: {', '.join(sorted(PRICE_PER_MILLION_TOKENS))}",
            file=sys.stderr,
        )
    if summary.pairs_seen == 0:
        raise _FailureError(_no_pairs(summary, args))
    return EXIT_OK


def _no_pairs(summary: WarmSummary, args: argparse.Namespace) -> str:
    """Why no line yielded a pair: most often, the documents keep their text elsewhere."""
    source = "standard input" if args.input == "-" else args.input
    if summary.documents_without_text and summary.fields_found:
        return (
            f"no (query, document) pair in {source}: no document has text in field "
            f"{args.field!r}; the documents' fields are {', '.join(summary.fields_found)}. "
            "Pass --field NAME."
        )
    if summary.documents_without_text:
        return f"no (query, document) pair in {source}: every document's text is empty"
    if summary.lines_read == 0:
        return f"no (query, document) pair in {source}: it is empty"
    return (
        f"no (query, document) pair in {source}: {_n(summary.lines_read, 'line')} read, "
        "none with documents"
    )


def _print_summary(summary: WarmSummary, as_json: bool) -> None:
    if as_json:
        data = {"schema_version": 1, **summary.__dict__}
        data["fields_found"] = list(summary.fields_found)
        print(json.dumps(data, indent=2))
        return
    title = "dry run: nothing sent, nothing changed" if summary.dry_run else "warmed"
    print(f"rerank-cache warm: {title}")
    rows = [
        ("lines read", f"{summary.lines_read:,}"),
        ("lines skipped", f"{summary.lines_skipped:,}"),
        ("pairs seen", f"{summary.pairs_seen:,}"),
        ("already cached", f"{summary.already_cached:,}"),
    ]
    if summary.dry_run:
        known = [c for c in summary.estimated_cost.values() if c is not None]
        cost = f"{sum(known):.4f} {CURRENCY}"
        unknown = [m for m, c in summary.estimated_cost.items() if c is None]
        if unknown:
            cost += f" + unknown ({', '.join(unknown)}: no list price)"
        rows += [
            ("repeated in the input", f"{summary.repeated_in_input:,}"),
            ("pairs to send", f"{summary.scored:,}"),
            ("estimated tokens", f"{summary.estimated_tokens:,}"),
            ("estimated cost", cost),
        ]
    else:
        rows += [
            ("scored", f"{summary.scored:,}"),
            ("API requests", f"{summary.api_requests:,}"),
            ("tokens billed", f"{summary.tokens_billed:,}"),
        ]
    if summary.documents_without_text:
        rows.append(("documents without text", f"{summary.documents_without_text:,}"))
    rows.append(("elapsed", f"{summary.elapsed:.1f} s"))
    for label, value in rows:
        print(f"  {label:<24}{value}")


# -- clear, check, path ------------------------------------------------------------------


def _clear(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, Path) and not os.path.lexists(target):
        print(f"nothing to clear: no cache at {target}")
        return EXIT_OK
    _require_writable(target)
    store, directory = _open_store(target)
    with contextlib.closing(store) as cache:
        n = cache.count(model=args.model, expired=args.expired)
        what = "expired scores" if args.expired else "scores"
        scope = f" of model {args.model}" if args.model else ""
        if n == 0:
            present = ""
            if args.model:  # a typo, most likely: say which models there are
                held = sorted(m for m, s in cache.stats().models.items() if m and s.entries)
                present = (
                    f"; models with scores: {', '.join(held)}" if held else "; it holds no scores"
                )
            print(f"nothing to clear: no {what}{scope} in {directory}{present}")
            return EXIT_OK
        if not args.yes:
            if not sys.stdin.isatty():
                raise _FailureError("refusing to clear without confirmation: pass --yes")
            answer = input(f"Delete {n:,} {what}{scope} from {directory}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_FAILURE
        clear = cache.expire if args.expired else cache.clear
        deleted = clear(model=args.model)
    print(f"deleted {deleted:,} {what}{scope}")
    return EXIT_OK


def _check(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        with _open_redis(target) as redis_store:
            return _report(redis_store.check(fix=args.fix))
    directory = target
    if not os.path.lexists(directory):
        print(f"ok: no cache at {directory} yet")
        return EXIT_OK
    _require_writable(directory)
    try:
        cache = ScoreCache(directory, recover=False)
    except CorruptCacheError:
        if not args.fix:
            raise
        ScoreCache(directory, recover=True).close()
        print(
            f"fixed: the damaged cache file in {directory} was moved aside "
            "(cache.db.corrupt-*); the cache starts empty"
        )
        return EXIT_OK
    with cache:
        return _report(cache.check(fix=args.fix))


def _report(report: CheckReport) -> int:
    for message in report.messages:
        print(f"  {message}")
    if report.fixed:
        print(f"fixed: removed {report.fixed:,} unsafe row(s)")
    status = "ok" if report.ok else "problems found (run with --fix)"
    print(f"{status}: {report.rows:,} rows checked, integrity {report.integrity}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _path(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        with _open_redis(target, ping=False) as redis_store:
            print(redis_store.location)
    else:
        print(target)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
