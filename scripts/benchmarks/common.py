"""What every row shares: constants, the table row, number formats, local servers, children.

Every import of a ``rerank_cache`` module other than the package itself (names that are not
public) is made here and nowhere else in the benchmarks, so a move inside the library is
fixed in this one place. Row modules take public names from ``rerank_cache`` directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rerank_cache import QwenReRanker, ScoreCache

# Not public: the library's internals the benchmarks measure or reuse (see the docstring).
from rerank_cache.client.core import DEFAULT_MAX_CONCURRENCY
from rerank_cache.examples import load_corpus
from rerank_cache.keys import KeyBuilder
from rerank_cache.planning import assemble
from rerank_cache.testing import DashScopeServer, ServerStats, count_tokens

if TYPE_CHECKING:
    from benchmarks.workload import Corpus

__all__ = [
    "API_KEY",
    "DEFAULT_MAX_CONCURRENCY",
    "FIELD",
    "HIT_QUERY",
    "MODEL",
    "ROOT",
    "SEED",
    "SUBPROCESS_TIMEOUT",
    "Context",
    "DashScopeServer",
    "KeyBuilder",
    "Row",
    "ServerProcess",
    "assemble",
    "child_env",
    "count_tokens",
    "load_corpus",
    "local_server",
    "log",
    "mb",
    "ms",
    "percentile",
    "reranker_for",
    "run_measuring_rss",
]

MODEL = "gte-rerank-v2"
API_KEY = "sk-bench-local-only"  # the local server accepts any key; nothing is billed
FIELD = "content"
SEED = 20240611
SUBPROCESS_TIMEOUT = 600.0
HIT_QUERY = "how does a score cache avoid paying twice for reranking"
ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the table; ``met`` is None where there is no target."""

    section: str
    name: str
    target: str
    measured: str
    met: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every measurement shares."""

    quick: bool
    tmp: Path
    corpus: Corpus
    serve_duration: float | None = None  # seconds per phase of the serve row; None: default


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


@contextlib.contextmanager
def local_server(**kwargs: Any) -> Iterator[DashScopeServer]:
    """A DashScopeServer on 127.0.0.1 that keeps no request log (bench sizes are large)."""
    with DashScopeServer(log_limit=0, **kwargs) as server:
        yield server


_SERVER_CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys
    from rerank_cache.testing import DashScopeServer

    latency, port, reuse_port = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    with DashScopeServer(log_limit=0, latency=latency, port=port, reuse_port=reuse_port) as server:
        print(server.base_url, flush=True)
        for _ in sys.stdin:  # any line asks for the counters; end of input stops the server
            print(json.dumps(dataclasses.asdict(server.stats)), flush=True)
    """
)


class ServerProcess:
    """A DashScopeServer in a child process, with ``base_url`` and ``stats`` like the real one.

    The real service's CPU work does not run in the client's process: here the test server
    scoring 2,000 documents would otherwise hold this process's GIL while its requests wait.

    With ``processes`` > 1, that many children listen on one port (``SO_REUSEPORT``: the
    kernel hands each new connection to one of them), so requests are read and scored in
    parallel, as the real service serves them on many machines; one child serves its
    requests one at a time under its GIL, and the last of a wave arrives late. ``stats``
    sums the children's counters (``max_in_flight`` too: an upper bound).
    """

    def __init__(self, latency: float, *, processes: int = 1) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.latency = latency
        self.processes = processes
        self.base_url = ""
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> ServerProcess:
        try:
            port = 0
            for _ in range(self.processes):
                base_url = self._start_child(port)
                if not self.base_url:
                    self.base_url = base_url
                    port = urlsplit(base_url).port or 0
                elif base_url != self.base_url:
                    raise RuntimeError("a server process did not bind the shared port")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_child(self, port: int) -> str:
        reuse = "1" if self.processes > 1 else "0"
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CHILD, str(self.latency), str(port), reuse],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError("the server process did not start")
        return base_url

    @property
    def stats(self) -> ServerStats:
        """The server's counters now (summed over its processes)."""
        if not self._procs:
            raise RuntimeError("the server process is not running")
        total = ServerStats()
        for proc in self._procs:
            if proc.stdin is None or proc.stdout is None:
                raise RuntimeError("the server process is not running")
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            data = json.loads(proc.stdout.readline())
            errors = dict(total.errors_by_status)
            for status, count in data["errors_by_status"].items():
                errors[int(status)] = errors.get(int(status), 0) + count
            total = ServerStats(
                requests=total.requests + data["requests"],
                ok_requests=total.ok_requests + data["ok_requests"],
                documents=total.documents + data["documents"],
                tokens=total.tokens + data["tokens"],
                errors_by_status=errors,
                max_in_flight=total.max_in_flight + data["max_in_flight"],
            )
        return total

    def __exit__(self, *exc_info: object) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


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
