"""Project hygiene: lint, types, and a tidy public API."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import rerank_cache

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_ruff_clean() -> None:
    """ruff finds nothing to fix in src, tests and scripts."""
    proc = _run("ruff", "check", "src", "tests", "scripts")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run("ruff", "format", "--check", "src", "tests", "scripts")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_clean() -> None:
    """The package type-checks under mypy --strict."""
    proc = _run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, and every name in it exists."""
    names = rerank_cache.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(rerank_cache, name), name


@pytest.mark.parametrize("name", [n for n in rerank_cache.__all__ if not n.startswith("__")])
def test_public_objects_have_docstrings(name: str) -> None:
    """Every public class and function says what it is for."""
    obj = getattr(rerank_cache, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr}"


PACKAGE = ROOT / "src" / "rerank_cache"
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
    for p in PACKAGE.rglob("*.py")
    if p.stem != "__main__"
)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every example in a docstring runs and prints what it claims."""
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    mod = importlib.import_module(f"rerank_cache.{module}".removesuffix(".__init__"))
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_star_import_works_without_redis() -> None:
    """`from rerank_cache import *` needs no optional dependency."""
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['zvec'] = None\n"
        "from rerank_cache import *\n"
        "import rerank_cache\n"
        "try:\n"
        "    rerank_cache.RedisScoreCache\n"
        "except ImportError as exc:\n"
        "    print('hint:', 'rerank-cache[redis]' in str(exc))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hint: True"
