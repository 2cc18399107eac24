"""Benchmarks of rerank-cache against the local DashScope server; prints a markdown table.

    python scripts/bench.py [--quick] [--only NAME]... [--json FILE]

Measurements (``--only`` takes these names):

* ``hit`` — ``CachedReRanker.rerank`` on 100 cached candidates next to the floor measured on
  the same store (xxhash of the 100 texts plus one ``ScoreCache.get_many``), with a breakdown.
* ``traffic`` — documents and tokens sent for a seeded workload of overlapping queries by
  zvec's own ``QwenReRanker``, a request-level cache and this project, next to the floor
  (the unique (model, instruct, query, text) pairs).
* ``cold`` — 2,000 uncached documents with 300 ms of server latency next to one request.
* ``processes`` — 4 processes reranking overlapping pairs on one cache directory.
* ``warm`` — ``rerank-cache warm`` on a JSONL file: pairs per second and peak RSS.
* ``stats`` — ``rerank-cache stats`` on a one-million-entry cache (built once, reused).
* ``redis`` — the hit path on a private ``redis-server`` next to diskcache, same run.
* ``loop`` — event-loop lag while ``arerank`` scores 2,000 uncached documents, next to the
  blocking ``rerank`` called inside the loop.

Every request goes to :class:`rerank_cache.testing.DashScopeServer` on 127.0.0.1 (never to
DashScope): nothing is billed and no key is needed. The server runs in this process, except
for ``cold``, where it runs in a child process so that its own CPU work (parsing and scoring
2,000 documents) does not hold the client's GIL, as the real, remote service would not.
``--quick`` finishes in under a minute; the full run takes a few minutes on a 2-core machine
(about a minute more the first time, to build the million-entry cache). Progress goes to
stderr, the machine description and the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rerank_cache import Doc, QwenReRanker, RetryPolicy, ScoreCache
from rerank_cache.client import DEFAULT_MAX_CONCURRENCY
from rerank_cache.examples import load_corpus
from rerank_cache.keys import KeyBuilder, doc_hash
from rerank_cache.planning import assemble
from rerank_cache.stores.disk import read_stats
from rerank_cache.testing import DashScopeServer, ServerStats, count_tokens

MODEL = "gte-rerank-v2"
API_KEY = "sk-bench-local-only"  # the local server accepts any key; nothing is billed
FIELD = "content"
SEED = 20240611
NAMES = ("hit", "traffic", "cold", "processes", "warm", "stats", "redis", "loop")
SUBPROCESS_TIMEOUT = 600.0


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- results -------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``met`` is None where there is no target."""

    section: str
    name: str
    target: str
    measured: str
    met: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)


def met_text(met: bool | None) -> str:
    """The "met?" cell."""
    return "—" if met is None else ("yes" if met else "**no**")


def table(rows: Sequence[Row]) -> str:
    """Render rows as a markdown table."""
    lines = [
        "| measurement | | target | measured | met? |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.section} | {r.name} | {r.target} | {r.measured} | {met_text(r.met)} |" for r in rows
    ]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    """Format seconds as milliseconds."""
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:,.1f} ms"


def mb(kib: int) -> str:
    """Format KiB (as /proc and getrusage report them) as decimal megabytes."""
    return f"{kib * 1024 / 1e6:.0f} MB"


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- machine description -----------------------------------------------------------------


def machine() -> dict[str, str]:
    """CPU, cores, RAM, Python, SQLite and package versions."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in ("rerank-cache", "dashscope", "diskcache", "xxhash", "pydantic", "zvec"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit = out + (" (with uncommitted changes)" if dirty else "")
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "RAM": ram,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "SQLite": sqlite3.sqlite_version,
        "packages": ", ".join(versions),
        "commit": commit,
        "load average at start (1/5/15 min)": load,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


# -- a synthetic corpus and a retrieval stand-in -------------------------------------------

_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class Corpus:
    """Documents of 300-500 characters in topics, with a word-overlap retriever per route.

    The retriever stands in for vector search: route ``content`` ranks documents by how
    many query words their text contains, route ``title`` by how many their title contains,
    ties broken by a fixed per-document order. It is deterministic and fast, and, like real
    retrieval, gives related queries overlapping candidate lists.
    """

    ids: list[str]
    titles: list[str]
    texts: list[str]
    topic_words: list[list[str]]
    index: dict[str, dict[str, list[int]]]
    noise: list[float]

    def docs(self, indexes: Sequence[int]) -> list[Doc]:
        """rerank_cache.Doc objects for these documents."""
        return [
            Doc(self.ids[i], fields={FIELD: self.texts[i], "title": self.titles[i]})
            for i in indexes
        ]

    def retrieve(self, query: str, route: str, k: int) -> list[int]:
        """The top ``k`` document indexes for ``query`` on ``route``."""
        counts: dict[int, int] = {}
        for word in {w.lower() for w in _WORD.findall(query)}:
            for i in self.index[route].get(word, ()):
                counts[i] = counts.get(i, 0) + 1
        ranked = sorted(counts, key=lambda i: (-counts[i], self.noise[i]))
        return ranked[:k]


def make_corpus(n: int, seed: int) -> Corpus:
    """Build ``n`` synthetic documents from the packaged corpus's vocabulary (seeded)."""
    rng = random.Random(seed)
    vocabulary = sorted(
        {
            w.lower()
            for d in load_corpus()
            for w in _WORD.findall(d["content"] + " " + d["title"])
            if len(w) > 3
        }
    )
    n_topics = max(12, n // 60)
    topic_words = [rng.sample(vocabulary, 40) for _ in range(n_topics)]
    ids, titles, texts = [], [], []
    for i in range(n):
        topic = rng.randrange(n_topics)
        words = topic_words[topic]
        if i > 10 and rng.random() < 0.02:
            # A mirrored page: the same text under another id (zvec dedups by id only).
            source = rng.randrange(i)
            titles.append(titles[source])
            texts.append(texts[source])
        else:
            titles.append(" ".join(w.capitalize() for w in rng.sample(words, rng.randint(3, 6))))
            target = rng.randint(300, 500)
            sentences: list[str] = []
            length = 0
            while length < target:
                sentence = [
                    rng.choice(words) if rng.random() < 0.6 else rng.choice(vocabulary)
                    for _ in range(rng.randint(6, 14))
                ]
                text = " ".join(sentence).capitalize() + rng.choice((".", ".", ".", ",", ";"))
                sentences.append(text)
                length += len(text) + 1
            body = " ".join(sentences)[: target - 1]
            body = body[: body.rfind(" ")].rstrip(",;.") + "."
            texts.append(body)
        ids.append(f"doc-{i:06d}")
    index: dict[str, dict[str, list[int]]] = {"content": {}, "title": {}}
    for i in range(n):
        for route, text in (("content", texts[i]), ("title", titles[i])):
            for word in {w.lower() for w in _WORD.findall(text)}:
                index[route].setdefault(word, []).append(i)
    noise = [rng.random() for _ in range(n)]
    return Corpus(ids, titles, texts, topic_words, index, noise)


# -- a seeded workload of overlapping queries ---------------------------------------------

_TEMPLATES = (
    "{a} {b} {c}",
    "how does {a} affect {b} {c}",
    "what is {a} {b} in {c}",
    "why {a} {b} {c} {d}",
    "{a} {b} for {c} {d}",
    "best {a} {b} {c}",
)


@dataclass(frozen=True)
class Request:
    """One rerank: a query and its candidate lists, one per vector route."""

    kind: str
    query: str
    routes: tuple[tuple[int, ...], ...]


def make_workload(corpus: Corpus, n_queries: int, seed: int) -> list[Request]:
    """Traffic shaped like real search: repeats, drift, reformulations, pages, routes.

    * ``new``: a new information need; 40 candidates from each of the two routes.
    * ``repeat``: the very same request again (popular queries repeat).
    * ``drift``: the same query after the index changed a little: per route one candidate
      dropped, one new one inserted, two neighbours swapped.
    * ``reformulation``: the user rephrases (new query text, mostly the same candidates).
    * ``page``: the next page: the same query with a pool twice (three times) as wide.
    * ``route``: the same query over one route only (a filter or a title search).
    """
    rng = random.Random(seed)
    per_route = 40
    needs: list[dict[str, Any]] = []  # words, query text, page
    history: list[Request] = []

    def query_for(words: list[str]) -> str:
        template = rng.choice(_TEMPLATES)
        a, b, c, d = (words + words)[:4]
        return template.format(a=a, b=b, c=c, d=d)

    def fetch(query: str, page: int, routes: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(corpus.retrieve(query, r, per_route * page)) for r in routes)

    def new_need() -> Request:
        topic = rng.randrange(len(corpus.topic_words))
        words = rng.sample(corpus.topic_words[topic], 4)
        need = {"words": words, "query": query_for(words), "page": 1}
        needs.append(need)
        return Request("new", need["query"], fetch(need["query"], 1, ("content", "title")))

    while len(history) < n_queries:
        r = rng.random()
        if not needs or r < 0.30:
            request = new_need()
        elif r < 0.50:
            # Popular queries repeat most: half the repeats come from the first 20 needs.
            head = [h for h in history[:60] if h.kind == "new"][:20]
            request = rng.choice(head if head and rng.random() < 0.5 else history)
            request = Request("repeat", request.query, request.routes)
        elif r < 0.62:
            base = rng.choice(history)
            routes = []
            for route in base.routes:
                items = list(route)
                if len(items) > 3:
                    gone = rng.randrange(len(items))
                    del items[gone]
                    present = set(items)
                    newcomer = rng.randrange(len(corpus.ids))
                    while newcomer in present:
                        newcomer = rng.randrange(len(corpus.ids))
                    items.insert(rng.randrange(len(items) + 1), newcomer)
                    swap = rng.randrange(len(items) - 1)
                    items[swap], items[swap + 1] = items[swap + 1], items[swap]
                routes.append(tuple(items))
            request = Request("drift", base.query, tuple(routes))
        elif r < 0.77:
            need = rng.choice(needs)
            words = list(need["words"])
            rng.shuffle(words)
            if rng.random() < 0.5:
                words[-1] = rng.choice(corpus.topic_words[rng.randrange(len(corpus.topic_words))])
            query = query_for(words)
            if query == need["query"]:
                query += " explained"
            new = {"words": words, "query": query, "page": 1}
            needs.append(new)
            request = Request("reformulation", query, fetch(query, 1, ("content", "title")))
        elif r < 0.90:
            need = rng.choice(needs)
            need["page"] = min(need["page"] + 1, 3)
            query = need["query"]
            request = Request("page", query, fetch(query, need["page"], ("content", "title")))
        else:
            need = rng.choice(needs)
            request = Request(
                "route", need["query"], fetch(need["query"], need["page"], ("content",))
            )
        history.append(request)
    return history


def request_texts(corpus: Corpus, request: Request) -> list[str]:
    """The texts a rerank of ``request`` scores (first occurrence of each id, in order)."""
    seen: set[int] = set()
    texts: list[str] = []
    for route in request.routes:
        for i in route:
            if i not in seen:
                seen.add(i)
                texts.append(corpus.texts[i])
    return texts


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def local_server(**kwargs: Any) -> Iterator[DashScopeServer]:
    """A DashScopeServer on 127.0.0.1 that keeps no request log (bench sizes are large)."""
    with DashScopeServer(log_limit=0, **kwargs) as server:
        yield server


_SERVER_CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys
    from rerank_cache.testing import DashScopeServer

    with DashScopeServer(log_limit=0, latency=float(sys.argv[1])) as server:
        print(server.base_url, flush=True)
        for _ in sys.stdin:  # any line asks for the counters; end of input stops the server
            print(json.dumps(dataclasses.asdict(server.stats)), flush=True)
    """
)


class ServerProcess:
    """A DashScopeServer in a child process, with ``base_url`` and ``stats`` like the real one.

    The real service's CPU work does not run in the client's process: here the test server
    scoring 2,000 documents would otherwise hold this process's GIL while its requests wait.
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CHILD, str(self.latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self._proc.stdout is not None
        self.base_url = self._proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError("the server process did not start")
        return self

    @property
    def stats(self) -> ServerStats:
        """The server's counters now."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the server process is not running")
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        data = json.loads(proc.stdout.readline())
        data["errors_by_status"] = {int(k): v for k, v in data["errors_by_status"].items()}
        return ServerStats(**data)

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()


def reranker_for(base_url: str, cache: ScoreCache, **kwargs: Any) -> Any:
    """A cached reranker pointed at the local server."""
    kwargs.setdefault("timeout", 30.0)
    return QwenReRanker(
        "benchmark",
        topn=10,
        rerank_field=FIELD,
        api_key=API_KEY,
        base_url=base_url,
        **kwargs,
    ).cached(cache)


def child_env(server: DashScopeServer | None = None) -> dict[str, str]:
    """Environment of a child process: local server, fake key, no proxy for 127.0.0.1."""
    env = dict(os.environ)
    env["DASHSCOPE_API_KEY"] = API_KEY
    if server is not None:
        env["DASHSCOPE_HTTP_BASE_URL"] = server.base_url
    env.pop("RERANK_CACHE_DIR", None)
    return env


def run_measuring_rss(
    args: list[str], env: dict[str, str], timeout: float
) -> tuple[int, str, str, int, float]:
    """Run a child; return (exit code, stdout, stderr, its peak RSS in KiB, wall seconds).

    ``os.wait4`` reports the resource usage of exactly that child (``RUSAGE_CHILDREN`` would
    mix in every earlier child). Its ``ru_maxrss`` also covers the instant between fork and
    exec, when the child still maps all of this (large) process: prefer the child's own
    ``VmHWM``, which exec resets, where /proc has it.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"{args[:3]} did not finish within {timeout:.0f} s")
            time.sleep(0.01)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            proc.returncode,
            out.read().decode(),
            err.read().decode(),
            int(usage.ru_maxrss),
            wall,
        )


# -- 1. hit path ---------------------------------------------------------------------------


def bench_hit(ctx: Context) -> list[Row]:
    """``CachedReRanker.rerank`` on 100 cached candidates, next to the floor."""
    iterations = 1_000 if ctx.quick else 5_000
    rng = random.Random(SEED + 1)
    distinct = list({t: i for i, t in enumerate(ctx.corpus.texts)}.values())  # no mirrors
    docs = ctx.corpus.docs(rng.sample(distinct, 100))
    results = [docs]
    texts = [d.fields[FIELD] for d in docs]
    lengths = [len(t) for t in texts]
    query = "how does a score cache avoid paying twice for reranking"
    with ScoreCache(ctx.tmp / "hit") as cache:
        with local_server() as server:
            # No retries: were anything sent once the server is gone, it fails at once.
            reranker = reranker_for(server.base_url, cache, retry=RetryPolicy(max_attempts=1))
            reranker = reranker.with_query(query)
            reranker.rerank(results)  # fill the cache: every later call is all hits
        # The server is stopped while timing: its polling thread would compete for the
        # GIL, and any document sent from here on would raise instead of going unnoticed.
        builder = KeyBuilder(MODEL, None, query)
        keys = [builder.key(t) for t in texts]
        assert len(cache.get_many(keys)) == 100, "the cache should hold all 100 scores"

        def floor() -> None:
            [doc_hash(t) for t in texts]
            cache.get_many(keys)

        def full() -> None:
            reranker.rerank(results)

        collected = reranker.prepare(results)
        scores = reranker.score_texts(collected.texts).scores

        def keys_step() -> None:
            b = KeyBuilder(MODEL, None, query)
            [b.key(t) for t in collected.texts]

        steps: dict[str, Callable[[], object]] = {
            "prepare / collect (dedup, field read, prepare_text)": lambda: reranker.prepare(
                results
            ),
            "key derivation (KeyBuilder + xxhash, 100 keys)": keys_step,
            "get_many (one batched read of 100 keys)": lambda: cache.get_many(keys),
            "assemble (sort, top 10, _replace)": lambda: assemble(collected.candidates, scores, 10),
        }
        for fn in (full, floor, *steps.values()):
            for _ in range(200):
                fn()
        gc.collect()
        full_t: list[float] = []
        floor_t: list[float] = []
        step_samples: dict[str, list[float]] = {name: [] for name in steps}
        clock = time.perf_counter
        for _ in range(iterations):  # interleaved, so load from elsewhere hits all alike
            t0 = clock()
            full()
            t1 = clock()
            floor()
            t2 = clock()
            full_t.append(t1 - t0)
            floor_t.append(t2 - t1)
            for name, fn in steps.items():
                t0 = clock()
                fn()
                step_samples[name].append(clock() - t0)
        step_t = {name: statistics.median(samples) for name, samples in step_samples.items()}
    med, p99 = statistics.median(full_t), percentile(full_t, 0.99)
    floor_med, floor_p99 = statistics.median(floor_t), percentile(floor_t, 0.99)
    ratio = med / floor_med
    section = "1 hit path"
    rows = [
        Row(
            section,
            f"rerank, 100 cached candidates ({min(lengths)}-{max(lengths)} chars), "
            f"median of {iterations:,}",
            "< 1 ms",
            ms(med),
            med < 0.001,
            {"median_s": med, "p99_s": p99},
        ),
        Row(section, "rerank p99", "—", ms(p99)),
        Row(
            section,
            "floor: doc_hash x100 + get_many, same store (median / p99)",
            "—",
            f"{ms(floor_med)} / {ms(floor_p99)}",
            None,
            {"median_s": floor_med, "p99_s": floor_p99},
        ),
        Row(section, "rerank median / floor median", "<= 2.0x", f"{ratio:.2f}x", ratio <= 2.0),
    ]
    accounted = 0.0
    for name, value in step_t.items():
        accounted += value
        rows.append(Row(section, f"breakdown: {name}", "—", ms(value)))
    rows.append(
        Row(
            section,
            "breakdown: rest (hit/miss split, counters, call overhead) = median - steps",
            "—",
            ms(med - accounted),
        )
    )
    return rows


# -- 2. API traffic ------------------------------------------------------------------------


class RequestCacheReRanker:
    """A request-level cache over zvec's ``QwenReRanker``, as an HTTP cache would key it.

    The key is the whole request: model, query and the ordered texts zvec would send; the
    value is their scores. A hit needs the very same request; any change of candidates or
    order is a miss that sends everything again.
    """

    def __init__(self, reranker_class: Any, store: dict[tuple[Any, ...], list[float]]) -> None:
        self._class = reranker_class
        self._store = store

    def rerank(self, query: str, query_results: list[list[Any]], topn: int) -> list[Any]:
        """Rerank like zvec's ``QwenReRanker(query).rerank``, from the cache when possible."""
        ids: list[str] = []
        by_id: dict[str, Any] = {}
        texts: list[str] = []
        for docs in query_results:  # zvec's own collection rule: first id wins, strip, skip
            for doc in docs:
                value = doc.field(FIELD)
                text = str(value).strip() if value else ""
                if doc.id in by_id or not text:
                    continue
                by_id[doc.id] = doc
                ids.append(doc.id)
                texts.append(text)
        key = (MODEL, query, tuple(texts))
        scores = self._store.get(key)
        if scores is None:
            ranked = self._class(query=query, rerank_field=FIELD, model=MODEL, api_key=API_KEY)
            got = {d.id: d.score for d in ranked.rerank(query_results, topn=len(ids) + 1)}
            scores = self._store[key] = [got[i] for i in ids]
        order = sorted(range(len(ids)), key=lambda i: -scores[i])
        return [by_id[ids[i]]._replace(score=scores[i]) for i in order[:topn]]


@contextlib.contextmanager
def dashscope_globals(base_url: str, api_key: str) -> Iterator[None]:
    """Point the SDK's module globals at the local server, in this process only.

    zvec's QwenReRanker cannot take a base address: it calls ``TextReRank.call`` without
    one (the SDK then reads ``dashscope.base_http_api_url``) and writes ``dashscope.api_key``
    itself. The old values are restored afterwards.
    """
    import dashscope

    old = (dashscope.base_http_api_url, dashscope.api_key)
    dashscope.base_http_api_url, dashscope.api_key = base_url, api_key
    try:
        yield
    finally:
        dashscope.base_http_api_url, dashscope.api_key = old


def bench_traffic(ctx: Context) -> list[Row]:
    """Documents and tokens sent for one seeded workload by three rerankers."""
    n_queries = 240 if ctx.quick else 1_000
    corpus = ctx.corpus
    workload = make_workload(corpus, n_queries, SEED + 2)
    kinds: dict[str, int] = {}
    for request in workload:
        kinds[request.kind] = kinds.get(request.kind, 0) + 1
    pairs: set[tuple[str, str | None, str, str]] = set()
    candidates = 0
    for request in workload:
        texts = request_texts(corpus, request)
        candidates += len(texts)
        pairs.update((MODEL, None, request.query, t) for t in texts)
    floor_docs = len(pairs)
    floor_tokens = sum(count_tokens(q) + count_tokens(t) for _, _, q, t in pairs)
    section = "2 API traffic"
    mix = ", ".join(f"{kinds[k]} {k}" for k in sorted(kinds))
    rows = [
        Row(
            section,
            f"workload: {len(workload)} queries ({mix}), 2 routes x 40 per page, "
            f"{len(corpus.ids):,}-doc corpus",
            "—",
            f"{candidates:,} candidates; floor {floor_docs:,} unique pairs, "
            f"{floor_tokens:,} tokens",
            None,
            {"queries": len(workload), "floor_documents": floor_docs, "floor_tokens": floor_tokens},
        )
    ]
    try:
        from zvec.extension import QwenReRanker as ZvecQwenReRanker
    except ImportError:
        ZvecQwenReRanker = None  # noqa: N806
    top: dict[str, list[list[str]]] = {}

    def measure(
        name: str,
        label: str,
        run: Callable[[Request], list[Any]],
        server: DashScopeServer,
        target: str | None,
    ) -> None:
        before = server.stats
        started = time.perf_counter()
        top[name] = [[d.id for d in run(request)][:10] for request in workload]
        elapsed = time.perf_counter() - started
        after = server.stats
        docs = after.documents - before.documents
        tokens = after.tokens - before.tokens
        requests = after.ok_requests - before.ok_requests
        met = None if target is None else (docs == floor_docs and tokens == floor_tokens)
        rows.append(
            Row(
                section,
                f"sent by {label}",
                target or "—",
                f"{docs:,} docs ({docs / floor_docs:.2f}x floor), {tokens:,} tokens "
                f"({tokens / floor_tokens:.2f}x), {requests:,} requests, {elapsed:.1f} s",
                met,
                {"documents": docs, "tokens": tokens, "requests": requests},
            )
        )

    with local_server() as server:
        if ZvecQwenReRanker is None:
            rows.append(
                Row(section, "sent by zvec QwenReRanker", "—", "skipped: zvec not installed")
            )
            rows.append(
                Row(section, "sent by a request-level cache", "—", "skipped: zvec not installed")
            )
        else:
            with dashscope_globals(server.base_url, API_KEY):

                def zvec_run(request: Request) -> list[Any]:
                    reranker = ZvecQwenReRanker(
                        query=request.query, rerank_field=FIELD, model=MODEL, api_key=API_KEY
                    )
                    results = [corpus.docs(route) for route in request.routes]
                    # zvec sends top_n=topn: ask for more than there are, so all are scored.
                    return list(reranker.rerank(results, topn=1_000))

                measure("zvec", "zvec QwenReRanker (no cache)", zvec_run, server, None)
                store: dict[tuple[Any, ...], list[float]] = {}
                request_cache = RequestCacheReRanker(ZvecQwenReRanker, store)
                measure(
                    "request",
                    "a request-level cache (model+query+ordered texts)",
                    lambda r: request_cache.rerank(
                        r.query, [corpus.docs(route) for route in r.routes], 10
                    ),
                    server,
                    None,
                )
        with ScoreCache(ctx.tmp / "traffic") as cache:
            base = reranker_for(server.base_url, cache)
            measure(
                "project",
                "this project (CachedReRanker)",
                lambda r: base.with_query(r.query).rerank(
                    [corpus.docs(route) for route in r.routes], 10
                ),
                server,
                f"= floor ({floor_docs:,} docs, {floor_tokens:,} tokens)",
            )
    if "zvec" in top:
        agree = {
            name: sum(a == b for a, b in zip(top["zvec"], top[name], strict=True))
            for name in ("request", "project")
        }
        rows.append(
            Row(
                section,
                "top-10 ids equal to zvec's (request cache / this project)",
                f"{len(workload)} / {len(workload)}",
                f"{agree['request']} / {agree['project']}",
                agree["request"] == agree["project"] == len(workload),
            )
        )
    return rows


# -- 3. cold path --------------------------------------------------------------------------


def bench_cold(ctx: Context) -> list[Row]:
    """2,000 uncached documents with 300 ms per request, next to one request."""
    latency = 0.3
    corpus = ctx.corpus
    rng = random.Random(SEED + 3)
    section = "3 cold path"
    repeats = 3 if ctx.quick else 5
    rows: list[Row] = []
    with ServerProcess(latency) as server, ScoreCache(ctx.tmp / "cold") as cache:
        base = reranker_for(server.base_url, cache)
        singles = []
        for attempt in range(repeats):
            docs = corpus.docs(rng.sample(range(len(corpus.ids)), 10))
            reranker = base.with_query(f"one small request number {attempt}")
            started = time.perf_counter()
            reranker.rerank([docs])
            singles.append(time.perf_counter() - started)
        one = statistics.median(singles)
        rows.append(
            Row(
                section,
                f"one request: 10 uncached docs through CachedReRanker (median of {repeats})",
                "—",
                ms(one),
                None,
                {"s": one},
            )
        )
        n_docs = 2_000
        docs = corpus.docs(rng.sample(range(len(corpus.ids)), n_docs))
        results = [docs]

        def cold(concurrency: int, tag: str) -> tuple[float, int, float, float, int]:
            """rerank() spelled out, so each request's arrival can be timed (on_batch)."""
            reranker = reranker_for(server.base_url, cache, max_concurrency=concurrency).with_query(
                f"cold start of a new query {tag}"
            )
            stored: list[float] = []
            before = server.stats
            started = time.perf_counter()
            collected = reranker.prepare(results)
            scored = reranker.score_texts(
                collected.texts, on_batch=lambda _: stored.append(time.perf_counter())
            )
            assemble(collected.candidates, scored.scores, 10)
            wall = time.perf_counter() - started
            after = server.stats
            assert after.documents - before.documents == len(collected.texts)
            requests = after.ok_requests - before.ok_requests
            first, last = min(stored) - started, max(stored) - started
            return wall, requests, first, last, len(collected.texts)

        def row(concurrency: int, label: str, *, judged: bool = True) -> tuple[float, int]:
            # Same-length queries: a query's token count changes how the texts are batched.
            runs = sorted(cold(concurrency, f"{concurrency:03d}-{i:03d}") for i in range(repeats))
            wall, requests, first, last, unique = runs[len(runs) // 2]  # the median run
            ratio = wall / one
            rows.append(
                Row(
                    section,
                    f"{n_docs:,} uncached docs ({unique:,} unique texts, {requests} requests), "
                    f"{label}, median of {repeats}",
                    "<= 1.5x one request" if judged else "—",
                    f"{ms(wall)} = {ratio:.2f}x (range {runs[0][0] / one:.2f}-"
                    f"{runs[-1][0] / one:.2f}x; first request stored at {ms(first)}, "
                    f"last at {ms(last)})",
                    ratio <= 1.5 if judged else None,
                    {"s": wall, "requests": requests, "concurrency": concurrency},
                )
            )
            return ratio, requests

        row(DEFAULT_MAX_CONCURRENCY, f"max_concurrency={DEFAULT_MAX_CONCURRENCY} (default)")
        row(4, "max_concurrency=4 (for comparison: three waves)", judged=False)
    return rows


# -- 4. many processes ---------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from rerank_cache import Doc, QwenReRanker, ScoreCache

    spec = json.load(open(sys.argv[1]))
    me = int(sys.argv[2])
    texts = spec["texts"]
    work = [
        (query, [[Doc(str(i), fields={"content": texts[i]}) for i in route] for route in routes])
        for query, routes in spec["requests"][me]
    ]
    cache = ScoreCache(spec["cache_dir"])
    base = QwenReRanker(
        "child", topn=10, rerank_field="content", api_key=spec["api_key"],
        base_url=spec["base_url"], timeout=30.0,
    ).cached(cache)
    print("ready", flush=True)
    sys.stdin.readline()
    errors = []
    started = time.monotonic()
    for query, results in work:
        try:
            base.with_query(query).rerank(results)
        except Exception as exc:
            errors.append(type(exc).__name__ + ": " + str(exc)[:200])
    ended = time.monotonic()
    cache.close()
    print(json.dumps({"started": started, "ended": ended, "reranks": len(work),
                      "errors": len(errors), "examples": errors[:3]}), flush=True)
    """
)


def bench_processes(ctx: Context) -> list[Row]:
    """4 processes x N reranks over overlapping pairs on one cache directory."""
    n_procs = 4
    per_proc = 100 if ctx.quick else 500
    latency = 0.05
    corpus = ctx.corpus
    # A shared pool of requests (queries with pages and routes); each process draws its
    # own seeded sequence from it, popular ones more often, so processes race for pairs.
    pool = make_workload(corpus, 120, SEED + 4)
    per: list[list[tuple[str, list[list[int]]]]] = []
    pairs: set[tuple[str, str]] = set()
    for p in range(n_procs):
        rng = random.Random(SEED + 40 + p)
        mine = []
        for _ in range(per_proc):
            request = pool[min(int(rng.expovariate(1 / 30)), len(pool) - 1)]
            mine.append((request.query, [list(route) for route in request.routes]))
            pairs.update((request.query, t) for t in request_texts(corpus, request))
        per.append(mine)
    section = "4 many processes"
    cache_dir = ctx.tmp / "processes"
    with local_server(latency=latency) as server:
        spec_path = ctx.tmp / "processes.json"
        spec_path.write_text(
            json.dumps(
                {
                    "texts": corpus.texts,
                    "requests": per,
                    "cache_dir": str(cache_dir),
                    "api_key": API_KEY,
                    "base_url": server.base_url,
                }
            )
        )
        ScoreCache(cache_dir).close()  # create it once, before the race
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(spec_path), str(p)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for p in range(n_procs)
        ]
        outputs = []
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    _, err = proc.communicate(timeout=30)
                    raise RuntimeError(f"child failed to start: {err[-2000:]}")
            for proc in procs:  # start together
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in procs:
                out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"child exited {proc.returncode}: {err[-2000:]}")
                outputs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        sent = server.stats.documents
        requests = server.stats.ok_requests
    stats = read_stats(cache_dir)
    wall = max(o["ended"] for o in outputs) - min(o["started"] for o in outputs)
    reranks = sum(o["reranks"] for o in outputs)
    errors = sum(o["errors"] for o in outputs)
    examples = [e for o in outputs for e in o["examples"]]
    extra = sent - len(pairs)
    return [
        Row(
            section,
            f"{n_procs} processes x {per_proc} reranks ({len(pairs):,} unique pairs, "
            f"{requests} requests, server latency {latency * 1000:.0f} ms): throughput",
            "—",
            f"{reranks / wall:,.0f} reranks/s ({reranks:,} in {wall:.2f} s)",
            None,
            {"reranks_per_s": reranks / wall},
        ),
        Row(
            section,
            "errors",
            "0",
            f"{errors}" + (f" ({'; '.join(examples)})" if examples else ""),
            errors == 0,
        ),
        Row(
            section,
            "documents sent beyond the floor (server documents - unique pairs)",
            "allowed across processes, counted",
            f"{extra:,} ({sent:,} sent, floor {len(pairs):,})",
            None,
            {"sent": sent, "floor": len(pairs)},
        ),
        Row(
            section,
            "cache.stats().duplicate_sends (must equal the row above)",
            "= documents beyond the floor",
            f"{stats.duplicate_sends:,}",
            stats.duplicate_sends == extra,
        ),
    ]


# -- 5. warming ----------------------------------------------------------------------------


def write_warm_file(path: Path, corpus: Corpus, pairs: int, seed: int) -> None:
    """A JSONL query log: one query per line with 100 candidate texts (all pairs unique)."""
    rng = random.Random(seed)
    unique = list(dict.fromkeys(corpus.texts))  # mirrored pages share a text
    with path.open("w", encoding="utf-8") as out:
        for line in range(pairs // 100):
            topic = rng.choice(corpus.topic_words)
            query = f"warm query {line}: " + " ".join(rng.sample(topic, 4))
            texts = rng.sample(unique, 100)
            out.write(json.dumps({"query": query, "documents": texts}) + "\n")


# Runs the CLI's main() and, at exit, reports the process's memory split (Linux):
# RssAnon is heap (Python objects, SQLite page caches), RssFile is file-backed pages
# (shared libraries and the memory-mapped cache.db).
_WARM_CHILD = textwrap.dedent(
    """
    import re, sys
    from rerank_cache.cli import main
    code = main(sys.argv[1:])
    try:
        status = open("/proc/self/status").read()
    except OSError:
        status = ""
    print("MEMORY " + " ".join(
        name + "=" + value.split()[0]
        for name, value in re.findall(r"^(VmHWM|RssAnon|RssFile):(.*)$", status, re.M)
    ), file=sys.stderr)
    sys.exit(code)
    """
)


def bench_warm(ctx: Context) -> list[Row]:
    """``rerank-cache warm`` on JSONL files of two sizes: pairs/s and peak RSS."""
    sizes = (1_000, 10_000) if ctx.quick else (10_000, 100_000)
    section = "5 warming"
    results = {}
    with local_server() as server:
        for size in sizes:
            source = ctx.tmp / f"warm-{size}.jsonl"
            write_warm_file(source, ctx.corpus, size, SEED + 5 + size)
            file_mb = source.stat().st_size / 1e6
            cache_dir = ctx.tmp / f"warm-cache-{size}"
            args = ["--cache-dir", str(cache_dir), "warm", str(source), "--json"]
            code, out, err, rss_kib, wall = run_measuring_rss(
                [sys.executable, "-c", _WARM_CHILD, *args],
                child_env(server),
                SUBPROCESS_TIMEOUT,
            )
            if code != 0:
                raise RuntimeError(f"rerank-cache warm exited {code}: {err[-2000:]}")
            summary = json.loads(out)
            assert summary["scored"] == size, summary
            memory: dict[str, int] = {}
            for line in err.splitlines():
                if line.startswith("MEMORY "):
                    memory = {k: int(v) for k, v in (p.split("=") for p in line.split()[1:])}
            peak = memory.get("VmHWM", rss_kib)  # wait4's figure includes the fork instant
            results[size] = (summary, peak, wall, file_mb, memory)
            source.unlink()
    small, large = sizes
    _s_small, rss_small, _, _, mem_small = results[small]
    s_large, rss_large, wall_large, mb_large, mem_large = results[large]
    rate = s_large["scored"] / s_large["elapsed"]
    growth = rss_large / rss_small
    rows = [
        Row(
            section,
            f"rerank-cache warm, {large:,} pairs ({large // 100:,} lines x 100 docs, "
            f"{mb_large:.0f} MB JSONL), concurrency 4: pairs/s",
            "—",
            f"{rate:,.0f} pairs/s ({s_large['elapsed']:.1f} s; {wall_large:.1f} s with "
            "process start)",
            None,
            {"pairs_per_s": rate},
        ),
        Row(
            section,
            f"peak RSS (the child's VmHWM) at {small:,} vs {large:,} pairs",
            "< 200 MB",
            f"{mb(rss_small)} vs {mb(rss_large)} ({growth:.2f}x)",
            rss_large * 1024 < 200e6,
            {"rss_small_kib": rss_small, "rss_large_kib": rss_large},
        ),
    ]
    if mem_small and mem_large:
        anon = mem_large["RssAnon"] / mem_small["RssAnon"]
        rows.append(
            Row(
                section,
                f"flat? memory at exit, {small:,} vs {large:,} pairs: heap (RssAnon) / "
                "file-backed (RssFile: libraries + mmap'd cache.db)",
                "heap flat (< 1.2x)",
                f"heap {mb(mem_small['RssAnon'])} vs {mb(mem_large['RssAnon'])} ({anon:.2f}x); "
                f"file-backed {mb(mem_small['RssFile'])} vs {mb(mem_large['RssFile'])}",
                anon < 1.2,
                {"anon_growth": anon},
            )
        )
    return rows


# -- 6. stats ------------------------------------------------------------------------------


def build_big_cache(directory: Path, entries: int) -> float | None:
    """Fill ``directory`` with ``entries`` scores through put_many unless already there.

    Keys are deterministic (three models, 50 documents per query), so an interrupted build
    is completed by the next run. Returns the build time, or None if nothing was built.
    """
    models = ("gte-rerank-v2",) * 7 + ("qwen3-rerank",) * 2 + ("qwen3-vl-rerank",)
    with ScoreCache(directory) as cache:
        if cache.count() >= entries:
            return None
        log(f"building a {entries:,}-entry cache in {directory} (once; reused later)")
        started = time.perf_counter()
        rng = random.Random(SEED + 6)
        chunk = 50_000
        for start in range(0, entries, chunk):
            by_model: dict[str, dict[str, float]] = {}
            for i in range(start, min(start + chunk, entries)):
                query = i // 50
                model = models[query % len(models)]
                key = KeyBuilder(model, None, f"query {query}").key_for_hash(doc_hash(f"doc {i}"))
                by_model.setdefault(model, {})[key] = rng.random()
            for model, scores in by_model.items():
                cache.put_many(
                    scores,
                    model=model,
                    api_requests=len(scores) // 50,
                    documents_sent=len(scores),
                    tokens_billed=len(scores) * 140,
                )
            log(f"  {min(start + chunk, entries):,} entries")
        return time.perf_counter() - started


def import_costs(env: dict[str, str]) -> list[tuple[str, float]]:
    """What ``import rerank_cache.cli`` spends, by package (from ``-X importtime``).

    Each package is charged the cumulative time of its outermost imports, so a package
    imported by another (aiohttp by dashscope) counts under both; sorted, largest first.
    """
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import rerank_cache.cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    entries = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            entries.append((depth, name.strip().split(".")[0], int(parts[1]) / 1e6))
    costs: dict[str, float] = {}
    stack: list[tuple[int, str]] = []
    for depth, package, seconds in reversed(entries):  # parents before children
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if package not in {p for _, p in stack}:
            costs[package] = costs.get(package, 0.0) + seconds
        stack.append((depth, package))
    return sorted(costs.items(), key=lambda item: -item[1])


def bench_stats(ctx: Context) -> list[Row]:
    """``rerank-cache stats`` on a one-million-entry cache (100k in --quick)."""
    entries = 100_000 if ctx.quick else 1_000_000
    name = "1m" if entries == 1_000_000 else f"{entries // 1000}k"
    directory = Path(tempfile.gettempdir()) / f"rerank-cache-bench-{name}"
    built = build_big_cache(directory, entries)
    env = child_env()
    command = [sys.executable, "-m", "rerank_cache", "--cache-dir", str(directory), "stats"]
    bare = [sys.executable, "-c", "import rerank_cache.cli"]
    walls: list[float] = []
    imports: list[float] = []
    for attempt in range(6):  # interleaved; the first round warms the page cache, not counted
        for args, into in ((command, walls), (bare, imports)):
            started = time.perf_counter()
            proc = subprocess.run(
                args, capture_output=True, text=True, env=env, timeout=120, check=False
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"{args} exited {proc.returncode}: {proc.stderr[-2000:]}")
            if attempt:
                into.append(wall)
    reads = []
    for _ in range(3):
        started = time.perf_counter()
        stats = read_stats(directory)
        reads.append(time.perf_counter() - started)
    wall = statistics.median(walls)
    top = ", ".join(f"{package} {seconds:.2f} s" for package, seconds in import_costs(env)[:5])
    section = "6 stats"
    size = stats.size_bytes / 1e6
    note = f"; built in {built:.0f} s" if built is not None else ""
    return [
        Row(
            section,
            f"`rerank-cache stats` on {stats.entries:,} entries ({size:,.0f} MB{note}), "
            "median of 5",
            "< 2 s",
            f"{wall:.2f} s",
            wall < 2.0,
            {"s": wall, "entries": stats.entries},
        ),
        Row(
            section,
            "of which: process start + `import rerank_cache.cli` (median of 5, interleaved)",
            "—",
            f"{statistics.median(imports):.2f} s (-X importtime: {top})",
        ),
        Row(
            section,
            "of which: read_stats() in-process (the SQL), median of 3",
            "—",
            f"{statistics.median(reads):.2f} s",
        ),
    ]


# -- main ----------------------------------------------------------------------------------


# -- 7. hit path on Redis ------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A private redis-server on 127.0.0.1 (no persistence); its URL, or None if absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start within 10 s")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def bench_redis(ctx: Context) -> list[Row]:
    """The hit path (100 cached candidates) on Redis next to diskcache, same run."""
    section = "7 hit path, Redis"
    iterations = 1_000 if ctx.quick else 5_000
    rng = random.Random(SEED + 7)
    distinct = list({t: i for i, t in enumerate(ctx.corpus.texts)}.values())
    results = [ctx.corpus.docs(rng.sample(distinct, 100))]
    query = "how does a score cache avoid paying twice for reranking"
    with redis_server() as url:
        if url is None:
            return [
                Row(
                    section,
                    "CachedReRanker.rerank, 100 cached",
                    "—",
                    "skipped: redis-server not installed",
                )
            ]
        try:
            from rerank_cache.stores.redis import RedisScoreCache
        except ImportError:
            return [
                Row(
                    section,
                    "CachedReRanker.rerank, 100 cached",
                    "—",
                    "skipped: redis-py not installed (pip install 'rerank-cache[redis]')",
                )
            ]
        medians: dict[str, float] = {}
        rows: list[Row] = []
        stores: list[tuple[str, Any]] = [
            ("diskcache", ScoreCache(ctx.tmp / "redis-vs-disk")),
            ("Redis (127.0.0.1)", RedisScoreCache(url)),
        ]
        for label, store in stores:
            with store, local_server() as server:
                reranker = reranker_for(server.base_url, store).with_query(query)
                reranker.rerank(results)  # fill: every later call is all hits
                sent = server.stats.documents
                samples = []
                for _ in range(iterations):
                    started = time.perf_counter()
                    reranker.rerank(results)
                    samples.append(time.perf_counter() - started)
                assert server.stats.documents == sent, "the hit path sent documents"
            medians[label] = statistics.median(samples)
            rows.append(
                Row(
                    section,
                    f"CachedReRanker.rerank, 100 cached, {label} (median / p99)",
                    "—",
                    f"{ms(medians[label])} / {ms(percentile(samples, 0.99))}",
                    None,
                    {"median_s": medians[label], "p99_s": percentile(samples, 0.99)},
                )
            )
        ratio = medians["Redis (127.0.0.1)"] / medians["diskcache"]
        rows.append(Row(section, "Redis median / diskcache median", "—", f"{ratio:.2f}x"))
        return rows


# -- 8. event-loop lag during an async cold rerank -------------------------------------------


async def _lag_during(work: Callable[[], Any], tick: float = 0.001) -> tuple[list[float], float]:
    """Run ``work`` (a coroutine function) while a ticker measures how late it wakes."""
    import asyncio

    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - started - tick)

    probe = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    try:
        await work()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await probe
    return lags, elapsed


def bench_loop(ctx: Context) -> list[Row]:
    """Event-loop lag while ``arerank`` scores 2,000 uncached documents (300 ms latency),
    next to the same rerank done with the blocking ``rerank`` inside the loop."""
    import asyncio

    from rerank_cache import close_async_sessions

    section = "8 event loop"
    rows: list[Row] = []
    rng = random.Random(SEED + 8)
    distinct = list({t: i for i, t in enumerate(ctx.corpus.texts)}.values())
    with ServerProcess(latency=0.3) as server:
        for label, use_async in (("arerank (async)", True), ("rerank (blocking)", False)):
            docs = ctx.corpus.docs(rng.sample(distinct, min(2_000, len(distinct))))
            with ScoreCache(ctx.tmp / f"loop-{use_async}") as cache:
                reranker = reranker_for(server.base_url, cache).with_query(
                    f"event loop probe {label}"
                )

                async def work(r: Any = reranker, d: list[Doc] = docs, a: bool = use_async) -> None:
                    if a:
                        await r.arerank([d], 10)
                    else:
                        r.rerank([d], 10)

                async def run(
                    w: Callable[[], Any] = work, r: Any = reranker, d: list[Doc] = docs
                ) -> tuple[list[float], float]:
                    try:
                        # Warm up as a running service would be: SDK imported, TLS ready.
                        await r.with_query("warm-up").arerank([d[:1]], 1)
                        return await _lag_during(w)
                    finally:
                        await close_async_sessions()

                lags, elapsed = asyncio.run(run())
            worst = max(lags) if lags else elapsed
            target = "max lag < 50 ms" if use_async else "—"
            met = worst < 0.05 if use_async else None
            rows.append(
                Row(
                    section,
                    f"{label}: 2,000 uncached docs, loop lag max / p99 (ticks)",
                    target,
                    f"{ms(worst)} / {ms(percentile(lags, 0.99) if lags else elapsed)} "
                    f"({len(lags)} ticks in {ms(elapsed)})",
                    met,
                    {"max_lag_s": worst, "ticks": len(lags), "elapsed_s": elapsed},
                )
            )
    return rows


@dataclass
class Context:
    """What every measurement shares."""

    quick: bool
    tmp: Path
    corpus: Corpus


BENCHES: dict[str, Callable[[Context], list[Row]]] = {
    "hit": bench_hit,
    "traffic": bench_traffic,
    "cold": bench_cold,
    "processes": bench_processes,
    "warm": bench_warm,
    "stats": bench_stats,
    "redis": bench_redis,
    "loop": bench_loop,
}


def only_local_traffic() -> None:
    """Make sure no proxy sits between us and 127.0.0.1 (requests honours NO_PROXY)."""
    for name in ("NO_PROXY", "no_proxy"):
        current = [p for p in os.environ.get(name, "").split(",") if p]
        os.environ[name] = ",".join([*current, "127.0.0.1", "localhost"])
    for name in ("DASHSCOPE_HTTP_BASE_URL", "DASHSCOPE_API_KEY"):
        os.environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; print the machine description and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; under a minute")
    parser.add_argument(
        "--only",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"run only this measurement (repeatable): {', '.join(NAMES)}",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = parser.parse_args(argv)
    only_local_traffic()
    names = [n for n in NAMES if not args.only or n in args.only]
    info = machine()
    print("## Machine\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print()
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rerank-cache-bench-") as tmp:
        corpus = make_corpus(4_000, SEED)
        ctx = Context(quick=args.quick, tmp=Path(tmp), corpus=corpus)
        for name in names:
            log(f"{name} ...")
            t0 = time.perf_counter()
            rows += BENCHES[name](ctx)
            log(f"{name} done in {time.perf_counter() - t0:.1f} s")
    total = time.perf_counter() - started
    mode = "quick" if args.quick else "full"
    try:
        load = ", load average at end " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = ""
    print(f"## Results ({mode} run, {total:.0f} s{load})\n")
    print(table(rows))
    missed = [r for r in rows if r.met is False]
    print(f"\n{len(missed)} target(s) missed." if missed else "\nAll targets met.")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "mode": mode,
                    "seconds": total,
                    "rows": [r.__dict__ for r in rows],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
