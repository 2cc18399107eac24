"""``rerank-cache warm``: score the pairs of a JSONL file into the store."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import DashScopeError
from ..pricing import CURRENCY, PRICE_PER_MILLION_TOKENS
from ..stores.disk import ScoreCache
from ..stores.protocols import ScoreStore
from ..stores.sqlite import DB_NAME
from ..warm import InvalidLineError, LineSkipped, LineWarmed, WarmSummary, warm
from .errors import EXIT_OK, FailureError, sigterm_as_interrupt
from .progress import WarmProgress
from .target import Target, open_store, require_writable
from .units import plural

__all__ = ["run_warm"]


@contextlib.contextmanager
def _open_input(name: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """Open the input; yield it and its size in bytes when known (a file, not a pipe)."""
    if name == "-":
        yield sys.stdin.buffer, _size_of(sys.stdin.buffer)
        return
    path = Path(name)
    if path.is_dir():
        raise FailureError(f"{name} is a directory, not a JSONL file")
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise FailureError(f"no such file: {name}") from None
    except PermissionError:
        raise FailureError(f"cannot read {name}: permission denied") from None
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
    if args.dry_run and isinstance(target, Path) and not (target / DB_NAME).exists():
        with (
            tempfile.TemporaryDirectory(prefix="rerank-cache-dry-run-") as scratch,
            ScoreCache(Path(scratch) / "empty", **kwargs) as empty,
        ):
            yield empty
        return
    if not args.dry_run:
        require_writable(target)
    with contextlib.closing(open_store(target, **kwargs)[0]) as cache:
        yield cache


def run_warm(args: argparse.Namespace, target: Target) -> int:
    if not args.dry_run and not os.environ.get("DASHSCOPE_API_KEY", "").strip():
        raise FailureError("no DashScope API key: set DASHSCOPE_API_KEY (or use --dry-run)")
    summary: WarmSummary | None = None
    with (
        _open_input(args.input) as (source, size),
        _warm_store(target, args) as cache,
        sigterm_as_interrupt(),
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
            raise FailureError(
                f"{exc}. Every line before it is warmed; fix the line or pass --skip-invalid."
            ) from None
        except DashScopeError as exc:
            raise FailureError(
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
        raise FailureError(_no_pairs(summary, args))
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
        f"no (query, document) pair in {source}: {plural(summary.lines_read, 'line')} read, "
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
