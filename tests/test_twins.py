"""The sync/async twins stay in step.

Every ``async def`` in ``src/`` is the twin of a sync function (named with an ``a`` prefix:
``rerank``/``arerank``, ``score_texts``/``ascore_texts``) or is listed in ``APART`` with the
reason it has no twin. A twin pair must be the same code once the asyncio spelling is taken out:
``await x`` is ``x``, ``await asyncio.to_thread(f, *args)`` is ``f(*args)``, ``async with``/
``async for`` are ``with``/``for``, each async twin's name is its sync twin's, and docstrings and
annotations are ignored. So a fix made to one twin and not the other fails here.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rerank_cache"

#: (module path under src/rerank_cache, sync qualname, async qualname)
TWINS: tuple[tuple[str, str, str], ...] = (
    ("base.py", "RerankMethods.rerank", "RerankMethods.arerank"),
    ("reranker.py", "QwenReRanker.score_texts", "QwenReRanker.ascore_texts"),
    ("cached.py", "CachedReRanker.score_texts", "CachedReRanker.ascore_texts"),
    ("cached.py", "CachedReRanker._fetch", "CachedReRanker._afetch"),
    ("client/core.py", "DashScopeClient._send", "DashScopeClient._asend"),
    ("integrations/_shared.py", "Ranker.rank", "Ranker.arank"),
    (
        "integrations/langchain.py",
        "CachedDashScopeRerank.compress_documents",
        "CachedDashScopeRerank.acompress_documents",
    ),
    (
        "integrations/llama_index.py",
        "CachedDashScopeRerank._postprocess_nodes",
        "CachedDashScopeRerank._apostprocess_nodes",
    ),
)

#: Twins whose waiting machinery differs (threads and events against tasks and futures), so
#: their bodies cannot match: they keep the same parameters, and each names why it differs.
KIN: dict[tuple[str, str, str], str] = {
    ("client/core.py", "DashScopeClient.score", "DashScopeClient.ascore"): (
        "sync sends a lone request without a thread pool; async plans large inputs off the loop"
    ),
    (
        "client/core.py",
        "DashScopeClient._send_concurrently",
        "DashScopeClient._asend_concurrently",
    ): "a thread pool against tasks under a semaphore",
    ("client/core.py", "DashScopeClient._call", "DashScopeClient._acall"): (
        "the SDK's two entry points (TextReRank with our pool, AioTextReRank with its own)"
    ),
}

#: Async functions with no sync twin to keep in step, and why.
APART: dict[tuple[str, str], str] = {
    ("base.py", "Scorer.ascore_texts"): "a protocol member: no body",
    ("base.py", "_Host.ascore_texts"): "a protocol member: no body",
    ("base.py", "_Host._aprepare"): "a protocol member: no body",
    ("base.py", "RerankMethods._aprepare"): "moves large inputs off the loop; sync has no loop",
    ("singleflight.py", "Flight.ajoin"): "a task awaits a future (no timeout: cancel the task)",
    ("client/sdk.py", "close_async_sessions"): "the SDK's asyncio session; sync has none to close",
}

#: Packages with no sync API at all, and why.
ASYNC_ONLY = {"serve/": "an aiohttp application: the proxy has no sync interface"}

#: Names used only on the async side, as the sync side spells them.
EXTRA_NAMES = {"_aprepare": "prepare", "ajoin": "join", "async_sleep": "sleep"}


def _functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function in a module by qualified name (nested functions included)."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found[f"{prefix}{child.name}"] = child
                walk(child, f"{prefix}{child.name}.<locals>.")

    walk(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


class _Desugar(ast.NodeTransformer):
    """Rewrites async code into the sync code it should equal."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Await(self, node: ast.Await) -> ast.AST:
        return self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "to_thread"
            and isinstance(func.value, ast.Name)
            and func.value.id == "asyncio"
        ):
            node = ast.Call(func=node.args[0], args=node.args[1:], keywords=node.keywords)
        self.generic_visit(node)
        return node

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        self.generic_visit(node)
        return ast.With(items=node.items, body=node.body, type_comment=None)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        self.generic_visit(node)
        return ast.For(
            target=node.target, iter=node.iter, body=node.body, orelse=node.orelse,
            type_comment=None,
        )  # fmt: skip

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        new = ast.FunctionDef(
            name=self.names.get(node.name, node.name), args=node.args, body=node.body,
            decorator_list=node.decorator_list, returns=None, type_comment=None,
        )  # fmt: skip
        if hasattr(node, "type_params"):
            new.type_params = node.type_params  # type: ignore[attr-defined]
        return new

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.returns = None
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.annotation = None
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        node.attr = self.names.get(node.attr, node.attr)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.names.get(node.id, node.id)
        return node


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]


def _normal(node: ast.AST, names: dict[str, str]) -> str:
    tree = _Desugar(names).visit(node)
    _strip_docstrings(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def _names() -> dict[str, str]:
    names = dict(EXTRA_NAMES)
    for _, sync, asyn in (*TWINS, *KIN):
        names[asyn.rsplit(".", 1)[-1]] = sync.rsplit(".", 1)[-1]
    return names


@pytest.mark.parametrize(("module", "sync", "asyn"), TWINS, ids=[t[2] for t in TWINS])
def test_twins_are_the_same_code(module: str, sync: str, asyn: str) -> None:
    """Each async twin is its sync twin with the asyncio spelling added, nothing more."""
    functions = _functions(SRC / module)
    assert sync in functions, f"{module}: no {sync}"
    assert asyn in functions, f"{module}: no {asyn}"
    assert isinstance(functions[asyn], ast.AsyncFunctionDef)
    names = _names()
    want = _normal(functions[sync], names)
    got = _normal(functions[asyn], names)
    diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), sync, asyn, n=2))
    assert want == got, f"{module}: {asyn} has drifted from {sync}:\n{diff}"


@pytest.mark.parametrize(("module", "sync", "asyn"), list(KIN), ids=[k[2] for k in KIN])
def test_kin_take_the_same_arguments(module: str, sync: str, asyn: str) -> None:
    """Twins whose machinery differs still take the same parameters, with the same defaults."""
    functions = _functions(SRC / module)
    sync_args, async_args = functions[sync].args, functions[asyn].args
    assert isinstance(functions[asyn], ast.AsyncFunctionDef)
    assert not isinstance(functions[sync], ast.AsyncFunctionDef)
    for field in ("posonlyargs", "args", "kwonlyargs"):
        assert [a.arg for a in getattr(sync_args, field)] == [
            a.arg for a in getattr(async_args, field)
        ], (module, asyn, field)
    assert [ast.dump(d) for d in sync_args.defaults] == [ast.dump(d) for d in async_args.defaults]
    assert [ast.dump(d) if d else None for d in sync_args.kw_defaults] == [
        ast.dump(d) if d else None for d in async_args.kw_defaults
    ]


def test_every_async_function_is_a_twin_or_explained() -> None:
    """A new ``async def`` gets a sync twin kept in step here, or a reason it has none."""
    twins = {(module, asyn) for module, _, asyn in (*TWINS, *KIN)}
    unaccounted = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        for qualname, node in _functions(path).items():
            if isinstance(node, ast.AsyncFunctionDef) and "<locals>" not in qualname:
                key = (module, qualname)
                if (
                    key not in twins
                    and key not in APART
                    and not module.startswith(tuple(ASYNC_ONLY))
                ):
                    unaccounted.append(f"{module}: {qualname}")
    assert not unaccounted, "async functions with no twin and no reason: " + ", ".join(unaccounted)


def test_async_names_follow_one_scheme() -> None:
    """Async twins are named ``a`` + the sync name, as the public ``arerank`` is."""
    for module, sync, asyn in (*TWINS, *KIN):
        head, _, sync_name = sync.rpartition(".")
        async_head, _, async_name = asyn.rpartition(".")
        assert head == async_head, (module, sync, asyn)
        assert async_name.lstrip("_") == "a" + sync_name.lstrip("_"), (module, sync, asyn)


def test_a_drifted_twin_is_caught() -> None:
    """The comparison sees a change made to one twin only (it is not vacuous)."""
    sync = ast.parse("def f(x):\n    return g(x) + 1\n").body[0]
    same = ast.parse("async def af(x):\n    return await asyncio.to_thread(g, x) + 1\n").body[0]
    drifted = ast.parse("async def af(x):\n    return await asyncio.to_thread(g, x) + 2\n").body[0]
    names = {"af": "f"}
    assert _normal(sync, names) == _normal(same, names)
    assert _normal(sync, names) != _normal(drifted, names)
