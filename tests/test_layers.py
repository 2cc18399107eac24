"""The import graph of ``src/`` has layers and no circles (docs/architecture.md draws it).

Every module belongs to a layer; a module imports only from its own layer or lower ones, and
no set of modules imports itself round. Imports inside functions count (they hide a circle,
they do not remove one); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "rerank_cache"

#: Layers, lowest first. A name covers the module of that name and every module below it
#: (the longest name that matches wins; "" is the package's own __init__ only).
#: docs/architecture.md explains each.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 leaves: no imports from the package
    (
        "errors", "doc", "keys", "pricing", "wire_rules", "urls", "singleflight", "examples",
        "client.results", "client.sdk", "stores.stats", "stores.counters", "stores.safedisk",
        "stores.memory",
        "testing.scoring", "testing.wire",
    ),
    # 1 pure decisions and contracts
    (
        "planning", "ratelimit", "client.retry", "stores.protocols", "stores.flusher",
        "stores.base", "stores.sqlite", "stores.redis_format",
    ),
    # 2 the seams the rerankers meet at, and what a response means
    ("base", "client.responses", "stores.redis_check"),
    # 3 I/O edges: DashScope, diskcache, Redis
    ("client", "stores"),
    # 4 the caching layer, then the reranker that offers it (``.cached()``)
    ("cached",),
    ("reranker",),
    # 6 what is built on the rerankers
    ("warm", "zvec", "integrations", "testing", "metrics"),
    # 7 commands and the public face
    ("cli", "serve", "__main__", ""),
)  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for number, names in enumerate(LAYERS):
        for name in names:
            covers = module == name or (name != "" and module.startswith(name + "."))
            if covers and len(name) > best_len:
                best, best_len = number, len(name)
    return best


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(n.lineno for n in ast.walk(sub) if hasattr(n, "lineno"))
    return lines


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (a package's __init__ counts as itself)."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        here = ".".join(filter(None, ["rerank_cache", module]))
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            for target in targets:
                if target != "rerank_cache" and not target.startswith("rerank_cache."):
                    continue
                name = target.removeprefix("rerank_cache").removeprefix(".")
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name in modules and name != module:
                    edges[module].add(name)
    return edges


def test_every_module_has_a_layer() -> None:
    """A new module is placed in a layer (here and in docs/architecture.md)."""
    assert [m for m in _modules() if _layer(m) < 0] == []


def test_no_import_reaches_up_a_layer() -> None:
    """Lower layers never import higher ones: seams do not depend on what implements them."""
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _imports(_modules()).items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_circles() -> None:
    """No set of modules imports itself round, not even through a function-level import."""
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert circles == []


def test_the_checks_see_an_upward_import_and_a_circle() -> None:
    """The graph is read right: known edges are found (so the checks are not vacuous)."""
    edges = _imports(_modules())
    assert "base" in edges["cached"]
    assert "client.results" in edges["base"]
    assert "stores.sqlite" in edges["stores.disk"]
    assert _layer("reranker") > _layer("cached") > _layer("base") > _layer("errors")
