"""Every ```python and ```console block in README.md and docs/*.md runs, so no example can rot.

The rules, for anyone writing docs:

* All ```python blocks (also ```py, ```python3) and ```console blocks of one file run in
  document order: python blocks in one shared namespace, with ``__name__ == "__main__"``, so
  a python block can write the files (a JSONL log, a cache) that a later console block uses.
  Other fences (sh, text, pycon) are not run.
* A python or console block whose first line is ``# doctest: skip`` is not run (keep for
  real-DashScope calls and for services the tests do not start, such as Redis).
* A ```text block whose first line is ``# output``, right after a python block (blank lines
  between are fine), pins what that block prints: an exact match after stripping trailing
  whitespace from each line and trailing blank lines.
* In a console block, every line starting with ``$`` is a command, and must be
  ``$ rerank-cache ARGS`` or ``$ python -m rerank_cache ARGS``. ARGS are split with
  ``shlex`` (quotes work; there is no shell: no ``~`` or ``$VAR`` expansion, pipes or
  redirections) and passed to ``rerank_cache.cli.main`` in-process, with stdin empty and not
  a terminal. The lines up to the next ``$`` line or the end of the block are what the
  command prints, stdout and stderr interleaved as a terminal shows them (warnings logged
  without a configured handler included, as Python prints them). They must match exactly,
  after stripping trailing whitespace from each line and trailing blank lines, except that
  ``<ANY>`` matches any run of characters within one line (timings, dates, temporary
  paths, sizes). The command must exit 0, unless the last line of its output is
  ``# exit N``, which expects exit code N instead.
* Each file gets a fresh local DashScope server, ``DASHSCOPE_API_KEY`` (a fake key),
  ``DASHSCOPE_HTTP_BASE_URL`` (the server), ``RERANK_CACHE_DIR`` (an empty temporary
  directory), no ``RERANK_CACHE_URL``, and a temporary working directory, so examples read
  like user code. Environment variables an example changes are restored after the file.
* Tracebacks point at the Markdown file and line of the failing example. Caches and local
  servers an example leaves open are closed after the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shlex
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dashscope
import pytest

from rerank_cache import CachedReRanker, ScoreStore
from rerank_cache.cli import main as cli_main
from rerank_cache.testing import DashScopeServer

from .redis_fixture import RedisServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FAKE_KEY = "sk-docs-example-0000"
PYTHON = frozenset({"python", "py", "python3"})  # all run: no example is skipped by a typo
CONSOLE = "console"
SKIP_MARK = "# doctest: skip"
OUTPUT_MARK = "# output"
ANY_MARK = "<ANY>"
# How a console line names the command; what follows is its argv.
PROGRAMS = (("rerank-cache",), ("python", "-m", "rerank_cache"), ("python3", "-m", "rerank_cache"))
_EXIT = re.compile(r"^# exit (?P<code>\d+)$")
# Shell syntax the harness cannot honour: refuse it rather than run something else.
_SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", "<", ">", ">>", "2>", "2>&1", "&>"})

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


@dataclass(frozen=True)
class Command:
    """One ``$ rerank-cache ...`` line of a console block and what it must print."""

    line: int  # 1-based line of the ``$`` line in the Markdown file
    text: str  # the command as written, without "$ "
    argv: list[str]
    expected: list[str]  # expected output lines (trailing whitespace and blank lines stripped)
    exit_code: int


def parse_console(path: Path, block: Block) -> list[Command]:
    """Split a console block into its commands and their expected output."""
    lines = block.code.rstrip("\n").split("\n")
    commands: list[Command] = []
    current: tuple[int, str, list[str]] | None = None
    sections: list[tuple[int, str, list[str]]] = []
    for offset, raw in enumerate(lines):
        number = block.line + offset
        if raw == "$" or raw.startswith("$ "):
            current = (number, raw[1:].strip(), [])
            sections.append(current)
        elif current is None:
            if raw.strip():
                raise AssertionError(
                    f"{path.name}:{number}: a console block must start with a '$ rerank-cache' "
                    f"line (or '{SKIP_MARK}'), not {raw!r}"
                )
        else:
            current[2].append(raw)
    if not sections:
        raise AssertionError(f"{path.name}:{block.line - 1}: a console block without a '$' line")
    for number, text, output in sections:
        argv = command_argv(path, number, text)
        expected = normalise("\n".join(output)).split("\n") if output else [""]
        exit_code = 0
        last = _EXIT.match(expected[-1].strip())
        if last is not None:
            exit_code = int(last["code"])
            expected = normalise("\n".join(expected[:-1])).split("\n")
        commands.append(
            Command(number, text, argv, [] if expected == [""] else expected, exit_code)
        )
    return commands


def command_argv(path: Path, number: int, text: str) -> list[str]:
    """Return the CLI arguments of a console command, refusing anything but rerank-cache."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise AssertionError(f"{path.name}:{number}: cannot split {text!r}: {exc}") from None
    for program in PROGRAMS:
        if tuple(words[: len(program)]) == program:
            argv = words[len(program) :]
            break
    else:
        raise AssertionError(
            f"{path.name}:{number}: console blocks run only 'rerank-cache' (or 'python -m "
            f"rerank_cache'), not {text!r}; show other commands in a ```sh block"
        )
    for word in argv:
        if word in _SHELL_OPERATORS or word.startswith("~") or "$" in word or "`" in word:
            raise AssertionError(
                f"{path.name}:{number}: {word!r} needs a shell, and console examples run "
                "without one (no pipes, redirections, ~ or $VAR); spell the path out"
            )
    return argv


@contextlib.contextmanager
def terminal_capture() -> Iterator[io.StringIO]:
    """Capture stdout and stderr interleaved, with an empty, non-terminal stdin.

    Warnings logged while no handler is configured go to stderr as Python's last-resort
    handler prints them (the bare message); under pytest its own handlers would hide them.
    """
    screen = io.StringIO()
    handler = logging.StreamHandler(screen)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    saved_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(screen), contextlib.redirect_stderr(screen):
            yield screen
    finally:
        root.removeHandler(handler)
        sys.stdin = saved_stdin


def run_command(path: Path, command: Command) -> tuple[str, int]:
    """Run one console command in-process; return what it printed and its exit code."""
    with terminal_capture() as screen:
        try:
            code = cli_main(command.argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:
            shown = (
                f"\nIt printed before failing:\n{screen.getvalue()}" if screen.getvalue() else ""
            )
            raise AssertionError(
                f"{path.name}:{command.line}: '$ {command.text}' raised "
                f"{type(exc).__name__}: {exc}{shown}"
            ) from exc
    return screen.getvalue(), code


def line_matches(expected: str, got: str) -> bool:
    """Match one output line exactly, ``<ANY>`` standing for any run of characters."""
    if ANY_MARK not in expected:
        return expected == got
    pattern = ".*".join(re.escape(part) for part in expected.split(ANY_MARK))
    return re.fullmatch(pattern, got, flags=re.DOTALL) is not None


def check_command(path: Path, command: Command, printed: str, code: int) -> None:
    got = normalise(printed)
    got_lines = got.split("\n") if got else []
    mismatch = len(got_lines) != len(command.expected) or not all(
        line_matches(want, have) for want, have in zip(command.expected, got_lines, strict=True)
    )
    if mismatch:
        want = "\n".join(command.expected)
        raise AssertionError(
            f"{path.name}:{command.line}: '$ {command.text}' printed\n{got}\n"
            f"but the console block says\n{want}"
        )
    if code != command.exit_code:
        raise AssertionError(
            f"{path.name}:{command.line}: '$ {command.text}' exited {code}, expected "
            f"{command.exit_code}"
            + ("" if command.exit_code else " (add '# exit N' to expect N)")
            + f"; it printed\n{got}"
        )


def run_console(path: Path, block: Block) -> None:
    """Run every command of a console block in order, checking output and exit code."""
    for command in parse_console(path, block):
        printed, code = run_command(path, command)
        check_command(path, command, printed, code)


def close_leftovers(namespace: dict[str, Any]) -> None:
    """Close caches and servers the examples left open, so nothing leaks into later tests."""
    for value in list(namespace.values()):
        if isinstance(value, type):
            continue  # a class the example imported, not an object it made
        if isinstance(value, CachedReRanker):
            value = value.cache
        if isinstance(value, ScoreStore):
            value.close()
        elif type(value).__module__.startswith("zvec") and type(value).__name__ == "Collection":
            value.close()  # zvec keeps open collections registered by path
        elif isinstance(value, DashScopeServer):
            value.stop()


@pytest.fixture
def docs_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[None]:
    """A fresh local DashScope server, the env vars examples rely on, and a scratch cwd.

    Runs after conftest's autouse fixture, which clears DASHSCOPE_* and sets
    RERANK_CACHE_DIR; the values set here win. Variables the examples change are restored.
    The SDK's module-level endpoint points at the local server too, so examples of zvec's
    own reranker (which reads it) run offline. A file that uses ``REDIS_URL`` gets a
    private redis-server.
    """
    workdir = tmp_path / "work"
    workdir.mkdir()
    path: Path = request.getfixturevalue("path")
    if "REDIS_URL" in path.read_text(encoding="utf-8"):
        redis: RedisServer = request.getfixturevalue("redis_server")
        monkeypatch.setenv("REDIS_URL", redis.url)
    with DashScopeServer() as server:
        monkeypatch.setattr(dashscope, "base_http_api_url", server.base_url)
        monkeypatch.setattr(dashscope, "api_key", None)
        monkeypatch.setenv("DASHSCOPE_API_KEY", FAKE_KEY)
        monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.base_url)
        monkeypatch.setenv("RERANK_CACHE_DIR", str(tmp_path / "rerank-cache"))
        monkeypatch.delenv("RERANK_CACHE_URL", raising=False)
        monkeypatch.chdir(workdir)
        saved = dict(os.environ)
        try:
            yield
        finally:  # undo what examples set by hand (os.environ[...] = ...)
            os.environ.clear()
            os.environ.update(saved)


@pytest.mark.usefixtures("docs_env")
@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_examples_run(path: Path) -> None:
    """Every python and console block of the file runs in order and prints what it pins."""
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
            elif block.lang == CONSOLE and first_line(block.code) != SKIP_MARK:
                run_console(path, block)
            previous = block
    finally:
        close_leftovers(namespace)


def test_console_rules() -> None:
    """Console blocks: commands split by '$', '<ANY>' within a line, '# exit N' last."""
    path = Path("example.md")
    block = parse_blocks(
        "```console\n$ rerank-cache path\n/tmp/<ANY>/cache   \n\n"
        "$ python -m rerank_cache --cache-dir 'a b' check\nrerank-cache: error: <ANY>\n# exit 1\n"
        "$ rerank-cache --version\n```\n",
        path.name,
    )[0]
    first, second, third = parse_console(path, block)
    assert (first.argv, first.expected, first.exit_code) == (["path"], ["/tmp/<ANY>/cache"], 0)
    assert (second.argv, second.exit_code) == (["--cache-dir", "a b", "check"], 1)
    assert (third.line, third.expected) == (8, [])
    check_command(path, first, "/tmp/x/y/cache\n\n", 0)
    check_command(path, second, "rerank-cache: error: anything at all\n", 1)
    with pytest.raises(AssertionError, match="exited 0, expected 1"):
        check_command(path, second, "rerank-cache: error: x\n", 0)
    with pytest.raises(AssertionError, match="but the console block says"):
        check_command(path, first, "/var/x/cache\n", 0)
    with pytest.raises(AssertionError, match="but the console block says"):
        check_command(path, first, "/tmp/x/cache\nextra line\n", 0)
    for bad in ("$ pip install rerank-cache", "$ rerank-cache --cache-dir ~/c stats"):
        with pytest.raises(AssertionError, match=r"example\.md:2"):
            parse_console(path, parse_blocks(f"```console\n{bad}\n```\n", path.name)[0])
