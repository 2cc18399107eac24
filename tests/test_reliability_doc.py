"""docs/reliability.md maps each guarantee to its tests: every test it names must exist.

A reference is a backticked ``tests/test_x.py::test_name``; a following ``::test_name`` in
the same table row means the same file. A renamed or deleted test fails here, so the map
cannot silently point at nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))

#: ``tests/x.py::name`` or ``::name`` (a test of the file named last in the row).
_REF = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def _references(text: str) -> list[tuple[int, str, str]]:
    """(line number, file, test name) of every test reference in ``text``."""
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        current: str | None = None
        for match in _REF.finditer(line):
            current = match.group(1) or current
            if current is None:
                raise AssertionError(f"line {number}: `::{match.group(2)}` before any file")
            found.append((number, current, match.group(2)))
    return found


def _tests_in(path: Path) -> set[str]:
    """Names of the module-level test functions of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    }


def test_the_reference_parser_follows_a_row() -> None:
    """``::name`` after a file means that file; each row starts afresh."""
    row = "| x | `tests/test_a.py::test_one`, `::test_two`, `tests/test_b.py::test_three` |"
    assert _references(row) == [
        (1, "tests/test_a.py", "test_one"),
        (1, "tests/test_a.py", "test_two"),
        (1, "tests/test_b.py", "test_three"),
    ]
    with pytest.raises(AssertionError, match="before any file"):
        _references("| y | `::test_orphan` |")


def test_reliability_map_names_tests() -> None:
    """The reliability map is not empty (a parser that finds nothing proves nothing)."""
    refs = _references((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    assert len(refs) >= 80
    assert {file for _, file, _ in refs} >= {
        "tests/test_hardening.py",
        "tests/test_store_hardening.py",
        "tests/test_reliability.py",
        "tests/test_store_contract.py",
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_a_doc_names_exists(doc: Path) -> None:
    """Each ``tests/...::test_name`` in the docs is a test function in that file."""
    cache: dict[str, set[str]] = {}
    missing = []
    for number, file, name in _references(doc.read_text(encoding="utf-8")):
        path = ROOT / file
        if file not in cache:
            cache[file] = _tests_in(path) if path.is_file() else set()
        if name not in cache[file]:
            missing.append(f"{doc.name}:{number}: {file}::{name}")
    assert not missing, "tests named in the docs that do not exist:\n" + "\n".join(missing)
