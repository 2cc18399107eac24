"""Shared test helpers: documents, warm-log lines, rerankers, processes, threads, raw rows.

Test modules import these from here (fixtures come from ``conftest.py``); no test module
imports another test module.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from rerank_cache import CachedReRanker, Doc, QwenReRanker, ScoreStore
from rerank_cache.keys import KeyBuilder
from rerank_cache.testing import DashScopeServer

API_KEY = "sk-test-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
QUERY = "vector database cache"
"""The query ``make_reranker`` uses unless told otherwise."""

WORDS = [
    "vector",
    "database",
    "cache",
    "rerank",
    "query",
    "token",
    "search",
    "index",
    "cosine",
    "latency",
    "python",
    "garden",
    "tomato",
    "bicycle",
    "planet",
    "orbit",
    "melody",
    "chord",
    "river",
    "mountain",
    "bread",
    "oven",
]


def make_docs(n: int, *, chars: int = 60, seed: int = 0, field: str = "content") -> list[Doc]:
    """``n`` documents ``d0``.. of about ``chars`` characters of WORDS, the same for a seed."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append(rng.choice(WORDS))
        docs.append(Doc(f"d{i}", score=1.0 - i / (n + 1), fields={field: " ".join(words)}))
    return docs


def log_lines(n: int, *, docs: int = 8, model: str | None = None) -> list[str]:
    """``n`` JSON lines for ``rerank-cache warm``: four queries, ``docs`` documents each."""
    lines = []
    for i in range(n):
        obj: dict[str, object] = {
            "query": f"query {i % 4}",
            "documents": [f"{WORDS[(i + j) % len(WORDS)]} doc {i}-{j}" for j in range(docs)],
        }
        if model:
            obj["model"] = model
        lines.append(json.dumps(obj))
    return lines


def write_log(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` as a JSON-lines file at ``path`` and return it."""
    path.write_text("\n".join(lines) + "\n")
    return path


def reranker_at(
    base_url: str, query: str = QUERY, *, api_key: str = API_KEY, **kwargs: object
) -> QwenReRanker:
    """A QwenReRanker on field ``content`` for a server at ``base_url`` (real retries)."""
    return QwenReRanker(
        query,
        rerank_field="content",
        api_key=api_key,
        base_url=base_url,
        **kwargs,  # type: ignore[arg-type]
    )


def pair_keys(reranker: QwenReRanker | CachedReRanker, texts: list[str]) -> list[str]:
    """The store keys of ``texts`` under ``reranker``'s model, instruct, query and scorer."""
    return KeyBuilder(
        reranker.model, reranker.instruct, reranker.query, scorer=reranker.scorer_id
    ).keys(texts)


def pairs_sent(server: DashScopeServer) -> Counter[tuple[str | None, str]]:
    """Each (query, document) the server answered, with how many times."""
    return Counter(
        (r.query, doc) for r in server.requests_log if r.status == 200 for doc in r.documents
    )


def cached(
    make_reranker: Callable[..., QwenReRanker],
    store: ScoreStore,
    query: str = QUERY,
    **kwargs: object,
) -> CachedReRanker:
    """A CachedReRanker over ``make_reranker(query, **kwargs)`` and ``store``."""
    return CachedReRanker(make_reranker(query, **kwargs), store)


class SleepRecorder:
    """Records the waits a RetryPolicy asks for instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run_python(
    *args: str,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``args``; output captured as text, the exit code unchecked."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env=None if env is None else dict(env),
        check=False,
        cwd=cwd,
    )


def run_threads(
    count: int, work: Callable[[int], object], *, timeout: float = 30
) -> list[BaseException]:
    """Run ``work(0)`` .. ``work(count - 1)`` in threads at once; return what they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors


@contextlib.contextmanager
def write_lock_held(directory: Path) -> Iterator[None]:
    """Hold the write lock of the cache in ``directory``, as another process would."""
    blocker = sqlite3.connect(directory / "cache.db", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def plant_row(
    directory: Path,
    key: str,
    *,
    value: object,
    mode: int = 1,
    filename: str | None = None,
    raw: int = 1,
) -> None:
    """Insert a row into diskcache's table behind the store's back (mode 1 raw, 2 file,
    4 pickle), as a tampering or buggy writer would."""
    con = sqlite3.connect(directory / "cache.db")
    with con:
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, "
            "tag, size, mode, filename, value) VALUES (?, ?, 0, NULL, 0, 0, NULL, 0, ?, ?, ?)",
            (key, raw, mode, filename, value),
        )
    con.close()
