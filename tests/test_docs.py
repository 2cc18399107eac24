"""Every ```python block in README.md and docs/*.md runs, so no example can rot.

The rules, for anyone writing docs:

* All ```python blocks (also ```py, ```python3) of one file run in order in one shared
  namespace, with ``__name__ == "__main__"``. Other fences (sh, text, pycon) are not run.
* A block whose first line is ``# doctest: skip`` is not run (keep for real-DashScope calls).
* A ```text block whose first line is ``# output``, right after a python block (blank lines
  between are fine), pins what that block prints: an exact match after stripping trailing
  whitespace from each line and trailing blank lines.
* Each file gets a fresh local DashScope server, ``DASHSCOPE_API_KEY`` (a fake key),
  ``DASHSCOPE_HTTP_BASE_URL`` (the server), ``RERANK_CACHE_DIR`` (an empty temporary
  directory) and a temporary working directory, so examples read like user code.
* Tracebacks point at the Markdown file and line of the failing example. Caches and local
  servers an example leaves open are closed after the file.
"""

from __future__ import annotations

import contextlib
import io
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerank_cache import CachedReRanker, ScoreCache
from rerank_cache.testing import DashScopeServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FAKE_KEY = "sk-docs-example-0000"
PYTHON = frozenset({"python", "py", "python3"})  # all run: no example is skipped by a typo
SKIP_MARK = "# doctest: skip"
OUTPUT_MARK = "# output"

# A fence opens with 3+ backticks or tildes (up to 3 spaces of indent) and an info string;
# it closes with the same character, at least as many, and nothing else on the line.
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    code: str
    line: int  # 1-based line of the first code line (just after the opening fence)
    follows_block: bool  # only blank lines separate it from the previous block


def parse_blocks(text: str, name: str) -> list[Block]:
    """Return the fenced code blocks of ``text`` in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    last_end: int | None = None  # index of the closing fence of the previous block
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        indent = len(opening["indent"])
        lang = opening["info"].split()[0].lower() if opening["info"] else ""
        start = index + 1
        end = start
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"]
            ):
                break
            end += 1
        else:
            raise AssertionError(f"{name}:{index + 1}: code fence {fence!r} is never closed")
        body = [line[indent:] if line[:indent].isspace() else line for line in lines[start:end]]
        between = lines[last_end + 1 : index] if last_end is not None else ["x"]
        blocks.append(
            Block(
                lang=lang,
                code="\n".join(body) + "\n",
                line=start + 1,
                follows_block=all(not line.strip() for line in between),
            )
        )
        last_end = end
        index = end + 1
    return blocks


def normalise(text: str) -> str:
    """Strip trailing whitespace from each line, and trailing blank lines."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def first_line(code: str) -> str:
    return code.split("\n", 1)[0].strip()


def check_output(path: Path, block: Block, printed: str, expected: Block) -> None:
    want = normalise(expected.code.split("\n", 1)[1] if "\n" in expected.code else "")
    got = normalise(printed)
    if got != want:
        raise AssertionError(
            f"{path.name}:{block.line}: the example printed\n{got}\n"
            f"but the '# output' block at line {expected.line - 1} says\n{want}"
        )


def run_block(path: Path, block: Block, namespace: dict[str, Any]) -> str:
    """Execute one block; return what it printed. Errors name the Markdown line."""
    # Pad so that line numbers in tracebacks are the Markdown file's own.
    source = "\n" * (block.line - 1) + block.code
    code = compile(source, str(path), "exec")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f"line {frames[-1].lineno}" if frames else f"the block at line {block.line}"
        printed = out.getvalue()
        shown = f"\nIt printed before failing:\n{printed}" if printed else ""
        raise AssertionError(
            f"{path.name}: the example at {where} raised {type(exc).__name__}: {exc}{shown}"
        ) from exc
    return out.getvalue()


def close_leftovers(namespace: dict[str, Any]) -> None:
    """Close caches and servers the examples left open, so nothing leaks into later tests."""
    for value in list(namespace.values()):
        if isinstance(value, CachedReRanker):
            value = value.cache
        if isinstance(value, ScoreCache):
            value.close()
        elif isinstance(value, DashScopeServer):
            value.stop()


@pytest.fixture
def docs_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A fresh local DashScope server, the env vars examples rely on, and a scratch cwd.

    Runs after conftest's autouse fixture, which clears DASHSCOPE_* and sets
    RERANK_CACHE_DIR; the values set here win.
    """
    workdir = tmp_path / "work"
    workdir.mkdir()
    with DashScopeServer() as server:
        monkeypatch.setenv("DASHSCOPE_API_KEY", FAKE_KEY)
        monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.base_url)
        monkeypatch.setenv("RERANK_CACHE_DIR", str(tmp_path / "rerank-cache"))
        monkeypatch.chdir(workdir)
        yield


@pytest.mark.usefixtures("docs_env")
@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_examples_run(path: Path) -> None:
    """Every python block of the file runs in order and prints what its '# output' pins."""
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    blocks = parse_blocks(path.read_text(encoding="utf-8"), path.name)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    previous: Block | None = None
    printed: str | None = None
    try:
        for block in blocks:
            if block.lang == "text" and first_line(block.code) == OUTPUT_MARK:
                if previous is None or previous.lang not in PYTHON or not block.follows_block:
                    raise AssertionError(
                        f"{path.name}:{block.line - 1}: a '# output' block must come right "
                        "after a python block"
                    )
                if printed is None:
                    raise AssertionError(
                        f"{path.name}:{block.line - 1}: a '# output' block follows a block "
                        f"marked '{SKIP_MARK}', so it cannot be checked"
                    )
                check_output(path, previous, printed, block)
            elif block.lang in PYTHON:
                skipped = first_line(block.code) == SKIP_MARK
                printed = None if skipped else run_block(path, block, namespace)
            previous = block
    finally:
        close_leftovers(namespace)
