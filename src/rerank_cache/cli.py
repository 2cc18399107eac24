"""The ``rerank-cache`` command: is the cache working, and what is it saving us?

Subcommands: ``stats``, ``warm``, ``clear``, ``check``, ``path``. Results go to stdout;
diagnostics and progress go to stderr. Exit codes: 0 success, 1 failure, 2 usage error.
A user mistake gives one line on stderr, never a traceback and never the API key.

Every command works on either store: a directory (``--cache-dir``, ``$RERANK_CACHE_DIR``)
or a Redis server (``--cache-url redis://...``, ``$RERANK_CACHE_URL``); the URL's password
never appears in any output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigurationError, CorruptCacheError, DashScopeError, RerankCacheError
from .pricing import CURRENCY, estimate_cost
from .protocols import ScoreStore
from .serve.command import add_serve_parser, run_serve
from .store import (
    CacheStats,
    CheckReport,
    ScoreCache,
    default_cache_dir,
    read_stats,
    resolve_cache_url,
)
from .warm import InvalidLineError, LineSkipped, LineWarmed, WarmSummary, warm

if TYPE_CHECKING:
    from .redis_store import RedisScoreCache

__all__ = ["main", "stats_json"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: Where the store is: a cache directory, or the URL of a Redis server.
Target = Path | str


class _FailureError(Exception):
    """A failure to report in one line (exit 1)."""


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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``rerank-cache`` command."""
    parser = argparse.ArgumentParser(
        prog="rerank-cache",
        description="Inspect, warm and maintain the rerank-cache score store.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache directory (default: $RERANK_CACHE_DIR, else ~/.cache/rerank-cache)",
    )
    where.add_argument(
        "--cache-url",
        metavar="URL",
        type=_cache_url,
        help="the store as a URL: redis://[:PASSWORD@]HOST:PORT/DB[?namespace=NAME], "
        "rediss:// (TLS), unix:///path/redis.sock, or file:///path/to/dir "
        "(default: $RERANK_CACHE_URL; then the cache directory)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    stats = sub.add_parser("stats", help="what the cache holds and what it saved")
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    w = sub.add_parser("warm", help="score pairs from a JSONL file into the cache")
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
        help="send nothing; report what would be sent and its estimated cost",
    )
    w.add_argument(
        "--skip-invalid",
        action="store_true",
        help="report invalid lines and go on instead of stopping",
    )
    w.add_argument("--json", action="store_true", help="print the summary as JSON")

    clear = sub.add_parser("clear", help="delete cached scores")
    clear.add_argument("--model", help="only this model's scores")
    clear.add_argument("--expired", action="store_true", help="only expired scores")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    check = sub.add_parser("check", help="check the store's integrity")
    check.add_argument(
        "--fix", action="store_true", help="remove unsafe rows; move a damaged file aside"
    )

    sub.add_parser("path", help="print the cache directory (or the Redis URL, password hidden)")
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
        return handler(args, _target(args))
    except KeyboardInterrupt:
        _err("interrupted; everything finished before the interruption is kept")
        return 130
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
    from .redis_store import RedisScoreCache  # needs the optional redis-py

    store = RedisScoreCache(url, **kwargs)
    if ping:
        try:
            store.ping()
        except BaseException:
            store.close()
            raise
    return store


def _open_store(target: Target, **kwargs: Any) -> tuple[ScoreStore, str]:
    """Open the store at ``target``; return it and where it is, for messages."""
    if isinstance(target, str):
        store = _open_redis(target, **kwargs)
        return store, store.location
    return ScoreCache(target, **kwargs), str(target)


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


def _stats(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        # Read-only: nothing is written (no counters are pending in a fresh store).
        with _open_redis(target, ping=False) as redis_store:
            stats = redis_store.stats()
        size_label = "memory (whole Redis)"
    else:
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
    row("hit rate", f"{data['hit_rate']:.1%}")
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
                f"{m['hit_rate']:.1%}",
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


class _Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.last = 0.0
        self.lines = self.pairs = self.cached = self.scored = self.requests = 0

    def update(self, event: LineWarmed, *, force: bool = False) -> None:
        self.lines += 1
        self.pairs += event.pairs
        self.cached += event.cached
        self.scored += event.scored
        self.requests += event.requests
        now = time.monotonic()
        if self.enabled and (force or now - self.last >= 0.1):
            self.last = now
            self.stream.write(
                f"\rwarming: {self.lines:,} lines · {self.pairs:,} pairs · "
                f"{self.cached:,} cached · {self.scored:,} scored · "
                f"{self.requests:,} requests"
            )
            self.stream.flush()

    def note(self, message: str) -> None:
        self.finish()
        print(message, file=self.stream)

    def finish(self) -> None:
        if self.enabled and self.last:
            self.stream.write("\n")
            self.stream.flush()
            self.last = 0.0


@contextlib.contextmanager
def _open_input(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
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
        yield handle


def _warm(args: argparse.Namespace, target: Target) -> int:
    if not args.dry_run and not os.environ.get("DASHSCOPE_API_KEY", "").strip():
        raise _FailureError("no DashScope API key: set DASHSCOPE_API_KEY (or use --dry-run)")
    progress = _Progress(sys.stderr)
    kwargs: dict[str, Any] = {} if args.ttl is None else {"ttl": args.ttl}
    with (
        _open_input(args.input) as source,
        contextlib.closing(_open_store(target, **kwargs)[0]) as cache,
    ):
        summary: WarmSummary | None = None
        try:
            for event in warm(
                source,
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
            progress.finish()
            raise _FailureError(
                f"{exc}. Every line before it is warmed; fix the line or pass --skip-invalid."
            ) from None
        except DashScopeError as exc:
            progress.finish()
            raise _FailureError(
                f"{exc} Every request that completed is stored; re-run to resume."
            ) from None
        progress.finish()
    assert summary is not None
    _print_summary(summary, args.json)
    return EXIT_OK


def _print_summary(summary: WarmSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"schema_version": 1, **summary.__dict__}, indent=2))
        return
    title = "dry run: nothing sent" if summary.dry_run else "warmed"
    print(f"rerank-cache warm: {title}")
    rows = [
        ("lines read", f"{summary.lines_read:,}"),
        ("lines skipped", f"{summary.lines_skipped:,}"),
        ("pairs seen", f"{summary.pairs_seen:,}"),
        ("already cached", f"{summary.already_cached:,}"),
    ]
    if summary.dry_run:
        cost = sum(c for c in summary.estimated_cost.values() if c is not None)
        rows += [
            ("pairs to send", f"{summary.scored:,}"),
            ("estimated tokens", f"{summary.estimated_tokens:,}"),
            ("estimated cost", f"{cost:.4f} {CURRENCY}"),
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
    store, directory = _open_store(target)
    with contextlib.closing(store) as cache:
        n = cache.count(model=args.model, expired=args.expired)
        what = "expired scores" if args.expired else "scores"
        scope = f" of model {args.model}" if args.model else ""
        if n == 0:
            print(f"nothing to clear: no {what}{scope} in {directory}")
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
