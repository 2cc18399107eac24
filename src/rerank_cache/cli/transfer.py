"""``rerank-cache export`` and ``import``: move live scores between stores as JSON lines.

One line per score: ``{"key": ..., "model": ..., "score": ..., "expiry": ...}`` with the
expiry in epoch seconds (null: never). Keys are hashes, so a file holds no query or document
text, and nothing about the store it came from (no URL, no password). Both commands stream:
the store is read in chunks and the file in batches, so memory stays flat on millions of
lines. An import checks the whole file first and refuses it, naming the line, if any line is
invalid: nothing is half-imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..keys import model_of
from ..stores.sqlite import DB_NAME
from .errors import EXIT_OK, FailureError
from .target import Target, open_store, require_writable
from .units import plural

__all__ = ["run_export", "run_import"]

_FIELDS = {"key", "model", "score", "expiry"}
_BATCH = 1000  # rows per write: one transaction (one MULTI) each


def run_export(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, Path) and not (target / DB_NAME).exists():
        raise FailureError(f"no cache at {target}: nothing to export")
    store, where = open_store(target)
    count = 0
    with contextlib.closing(store), _output(args.output) as out:
        for key, score, expiry in store.iter_live(args.model):
            line = {"key": key, "model": model_of(key), "score": score, "expiry": expiry}
            out.write(json.dumps(line) + "\n")
            count += 1
    scope = f" of model {args.model}" if args.model else ""
    print(f"rerank-cache: exported {plural(count, 'score')}{scope} from {where}", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _output(name: str) -> Iterator[IO[str]]:
    if name == "-":
        yield sys.stdout
        return
    path = Path(name)
    # Written beside the target and renamed: a failed export leaves no truncated file.
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent or ".", prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as tmp:
        try:
            yield tmp
        except BaseException:
            tmp.close()
            Path(tmp.name).unlink()
            raise
    Path(tmp.name).replace(path)


def _parse(text: str, where: str) -> tuple[str, float, float | None]:
    """One line as ``(key, score, expiry)``; raise FailureError naming ``where`` if invalid."""

    def bad(problem: str) -> FailureError:
        return FailureError(f"{where}: {problem}; nothing was imported")

    try:
        obj: Any = json.loads(text)
    except ValueError:
        raise bad("not a JSON object") from None
    if not isinstance(obj, dict) or set(obj) != _FIELDS:
        raise bad(f"expected an object with exactly the fields {', '.join(sorted(_FIELDS))}")
    key, model, score, expiry = obj["key"], obj["model"], obj["score"], obj["expiry"]
    if not isinstance(key, str) or model_of(key) is None:
        raise bad("'key' is not a rerank-cache key")
    if model != model_of(key):
        raise bad("'model' does not match the model in 'key'")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise bad("'score' is not a finite number")
    if expiry is not None and (
        isinstance(expiry, bool) or not isinstance(expiry, (int, float)) or not expiry > 0
    ):
        raise bad("'expiry' is not epoch seconds or null")
    return key, float(score), None if expiry is None else float(expiry)


def _lines(handle: IO[bytes], name: str) -> Iterator[tuple[str, str]]:
    """(where, text) of every non-blank line."""
    for number, raw in enumerate(handle, 1):
        where = f"{name}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FailureError(f"{where}: not UTF-8 text; nothing was imported") from None
        if text.strip():
            yield where, text


@contextlib.contextmanager
def _input(name: str) -> Iterator[tuple[IO[bytes], str]]:
    """The file to read twice (validate, then import); standard input is spooled first."""
    if name == "-":
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.seek(0)
            yield spool, "<stdin>"
        return
    try:
        handle = Path(name).open("rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise FailureError(f"no such file: {name}") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise FailureError(f"cannot read {name}: {exc.strerror}") from None
    with handle:
        yield handle, name


def run_import(args: argparse.Namespace, target: Target) -> int:
    with _input(args.input) as (handle, name):
        lines = 0
        for at, text in _lines(handle, name):  # the first pass: refuse an invalid file whole
            _parse(text, at)
            lines += 1
        handle.seek(0)
        require_writable(target)
        store, where = open_store(target)
        imported = expired = 0
        with contextlib.closing(store):
            batch: list[tuple[str, float, float | None]] = []
            for at, text in _lines(handle, name):
                row = _parse(text, at)
                if row[2] is not None and row[2] <= time.time():
                    expired += 1
                    continue
                batch.append(row)
                if len(batch) >= _BATCH:
                    imported += store.put_expiring(batch)
                    batch = []
            imported += store.put_expiring(batch) if batch else 0
    print(
        f"imported {plural(imported, 'score')} into {where}; skipped "
        f"{plural(expired, 'expired line')} (of {plural(lines, 'line')})"
    )
    return EXIT_OK
