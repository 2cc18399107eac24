"""Load benchmark of `rerank-cache serve` (issue 17); prints a markdown table.

    python scripts/bench_serve.py [--duration SECONDS] [--clients N] [--json FILE]

Three processes: the local DashScope server (:class:`rerank_cache.testing.DashScopeServer`,
never DashScope itself), the proxy (``python -m rerank_cache serve``, as deployed), and this
one, whose asyncio clients post DashScope's native request over keep-alive connections.

* ``all-hit`` — ``--clients`` concurrent clients (64) each sending 100-document requests
  whose pairs are all cached, for ``--duration`` seconds: requests per second, p50/p99
  latency, and the proxy's RSS sampled every second (first, last, peak), which should stay
  flat over a long run (``--duration 300`` for the five minutes of issue 17).
* ``mixed`` — the same clients against an upstream answering after ``--upstream-latency``
  (300 ms): each request carries 100 documents of which ``--new`` (20) were never seen,
  so every request pays one upstream round trip for its new pairs only.

The default duration is short (10 s per phase). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
NATIVE_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"
KEY = "sk-bench-0000"
MODEL = "gte-rerank-v2"

_UPSTREAM = """
import sys, time
from rerank_cache.testing import DashScopeServer
server = DashScopeServer(latency=float(sys.argv[1]), log_limit=0)
server.start()
print(server.base_url, flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass
class PhaseResult:
    """What one phase measured."""

    phase: str
    clients: int
    seconds: float
    requests: int
    errors: int
    requests_per_second: float
    documents_per_second: float
    p50_ms: float
    p99_ms: float
    rss_first_mib: float
    rss_last_mib: float
    rss_peak_mib: float


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stack:
    """The upstream and the proxy, each in its own process."""

    def __init__(self, latency: float, cache_dir: Path) -> None:
        self.upstream = subprocess.Popen(
            [sys.executable, "-c", _UPSTREAM, str(latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert self.upstream.stdout is not None
        upstream_url = self.upstream.stdout.readline().strip()
        port = _free_port()
        self.origin = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "rerank_cache", "--cache-dir", str(cache_dir)]
        command += ["serve", "--port", str(port), "--upstream", upstream_url, "--no-access-log"]
        self.proxy = subprocess.Popen(
            command,
            env=_env(),
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with session.get(self.origin + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.proxy.send_signal(signal.SIGTERM)
        try:
            self.proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proxy.kill()
        assert self.upstream.stdin is not None
        self.upstream.stdin.close()
        self.upstream.wait(timeout=30)


def _documents(query: int, start: int, count: int) -> list[str]:
    return [f"query {query} candidate {i}: a passage about caching rerank scores" for i in
            range(start, start + count)]  # fmt: skip


async def _post(session: aiohttp.ClientSession, url: str, query: int, docs: list[str]) -> int:
    body = {
        "model": MODEL,
        "input": {"query": f"benchmark query number {query}", "documents": docs},
        "parameters": {},
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(url, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def _phase(
    name: str,
    stack: Stack,
    session: aiohttp.ClientSession,
    *,
    clients: int,
    duration: float,
    documents: int,
    queries: int,
    new: int,
) -> PhaseResult:
    url = stack.origin + NATIVE_PATH
    # Warm the cache: every query's first `documents` candidates.
    await asyncio.gather(
        *(_post(session, url, q, _documents(q, 0, documents)) for q in range(queries))
    )
    latencies: list[float] = []
    errors = 0
    fresh = iter(range(documents, 10**9, new or 1))  # each mixed request's new candidates
    rss: list[float] = [_rss_mib(stack.proxy.pid)]
    stop_at = time.monotonic() + duration

    async def client(number: int) -> None:
        nonlocal errors
        turn = number
        while time.monotonic() < stop_at:
            query = turn % queries
            turn += clients
            docs = _documents(query, 0, documents - new)
            if new:
                docs += _documents(query, next(fresh), new)
            started = time.perf_counter()
            status = await _post(session, url, query, docs)
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    async def sample_rss() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            rss.append(_rss_mib(stack.proxy.pid))

    began = time.perf_counter()
    await asyncio.gather(sample_rss(), *(client(n) for n in range(clients)))
    seconds = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return PhaseResult(
        phase=name,
        clients=clients,
        seconds=round(seconds, 1),
        requests=len(latencies),
        errors=errors,
        requests_per_second=round(len(latencies) / seconds, 1),
        documents_per_second=round(len(latencies) * documents / seconds),
        p50_ms=round(statistics.median(latencies) * 1000, 1) if latencies else 0.0,
        p99_ms=round(p99 * 1000, 1),
        rss_first_mib=round(rss[0], 1),
        rss_last_mib=round(rss[-1], 1),
        rss_peak_mib=round(max(rss), 1),
    )


async def _run(args: argparse.Namespace) -> list[PhaseResult]:
    out: list[PhaseResult] = []
    phases = [("all-hit", 0.0, 0), ("mixed", args.upstream_latency, args.new)]
    connector = aiohttp.TCPConnector(limit=args.clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for name, latency, new in phases:
            with tempfile.TemporaryDirectory() as cache_dir:
                stack = Stack(latency, Path(cache_dir))
                try:
                    await stack.wait_ready(session)
                    print(f"bench_serve: {name} for {args.duration:g} s ...", file=sys.stderr)
                    out.append(
                        await _phase(
                            name,
                            stack,
                            session,
                            clients=args.clients,
                            duration=args.duration,
                            documents=args.documents,
                            queries=args.queries,
                            new=new,
                        )
                    )
                finally:
                    stack.close()
    return out


def _table(results: list[PhaseResult]) -> str:
    head = (
        "| phase | clients | requests/s | documents/s | p50 ms | p99 ms | errors "
        "| proxy RSS MiB (first / last / peak) |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---|"
    rows = [
        f"| {r.phase} | {r.clients} | {r.requests_per_second} | {r.documents_per_second} | "
        f"{r.p50_ms} | {r.p99_ms} | {r.errors} | {r.rss_first_mib} / {r.rss_last_mib} / "
        f"{r.rss_peak_mib} |"
        for r in results
    ]
    return "\n".join([head, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    """Run both phases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (10)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--documents", type=int, default=100, help="documents per request")
    parser.add_argument("--queries", type=int, default=20, help="distinct queries (20)")
    parser.add_argument("--new", type=int, default=20, help="new documents per mixed request")
    parser.add_argument(
        "--upstream-latency", type=float, default=0.3, help="mixed phase upstream latency (0.3)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = asyncio.run(_run(args))
    print(_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
