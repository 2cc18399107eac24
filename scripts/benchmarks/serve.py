"""Row 10, the caching proxy ``rerank-cache serve`` under load (issue 17).

Three processes: the local DashScope server (:class:`benchmarks.common.ServerProcess`, never
DashScope itself), the proxy (``python -m rerank_cache serve``, as deployed) and this one,
whose 64 asyncio clients post DashScope's native request over keep-alive connections.

* ``all-hit`` — each client sends 100-document requests whose pairs are all cached:
  requests per second, p50/p99 latency, and the proxy's RSS sampled every second. The RSS
  target is about the second half of the run, after warm-up: it must stay flat.
* ``mixed`` — the same clients against an upstream answering after 300 ms: each request
  carries 100 documents of which 20 were never seen, so every request pays one upstream
  round trip for its new pairs only.

Each phase lasts ``--serve-duration`` seconds (default 20, ``--quick`` 3; issue 17's
five-minute run is ``--serve-duration 300``).

Alone, from the repository root: ``python scripts/bench.py --only serve [--quick]
[--serve-duration SECONDS]`` or ``PYTHONPATH=scripts python -m benchmarks.serve [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common import ROOT, Context, Row, ServerProcess, log, ms, percentile

NATIVE_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"
KEY = "sk-bench-local-only"  # the local server accepts any key; nothing is billed
MODEL = "gte-rerank-v2"
CLIENTS = 64
DOCUMENTS = 100
QUERIES = 20
NEW = 20  # never-seen documents per mixed request
UPSTREAM_LATENCY = 0.3
#: A flat RSS: the second half of the all-hit run grows by less than this.
FLAT_MIB = 2.0

if TYPE_CHECKING:  # imported when run: aiohttp comes with the [serve] extra, other rows run without
    import aiohttp


@dataclass
class Phase:
    """What one phase measured."""

    seconds: float
    latencies: list[float]
    errors: int
    rss_mib: list[float]  # the proxy's RSS, once a second from the start

    @property
    def requests_per_second(self) -> float:
        """Answered requests (errors included) per second."""
        return len(self.latencies) / self.seconds

    def second_half_growth(self) -> float:
        """RSS at the end minus RSS half-way through, in MiB."""
        return self.rss_mib[-1] - self.rss_mib[len(self.rss_mib) // 2]


def _proxy_env() -> dict[str, str]:
    # No DASHSCOPE_API_KEY: the proxy runs in pass-through mode, with the clients' key.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    # The proxy measured is this checkout's, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.pop("RERANK_CACHE_DIR", None)
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


class ProxyProcess:
    """``python -m rerank_cache serve`` on a free port of 127.0.0.1, in pass-through mode."""

    def __init__(self, upstream: str, cache_dir: Path) -> None:
        port = _free_port()
        self.origin = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "rerank_cache", "--cache-dir", str(cache_dir), "serve"]
        command += ["--port", str(port), "--upstream", upstream, "--no-access-log"]
        self._proc = subprocess.Popen(command, env=_proxy_env(), stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        """The proxy's process id."""
        return self._proc.pid

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Poll ``/healthz`` until it answers (a minute at most)."""
        import aiohttp

        deadline = time.monotonic() + 60
        while True:
            try:
                async with session.get(self.origin + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """SIGTERM, as a service manager stops it; the proxy drains and exits."""
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _documents(query: int, start: int, count: int) -> list[str]:
    return [
        f"query {query} candidate {i}: a passage about caching rerank scores"
        for i in range(start, start + count)
    ]


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


async def _load(proxy: ProxyProcess, *, duration: float, new: int) -> Phase:
    """Warm the cache with every query's first documents, then run the clients."""
    import aiohttp

    url = proxy.origin + NATIVE_PATH
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await proxy.wait_ready(session)
        await asyncio.gather(
            *(_post(session, url, q, _documents(q, 0, DOCUMENTS)) for q in range(QUERIES))
        )
        latencies: list[float] = []
        errors = 0
        fresh = iter(range(DOCUMENTS, 10**9, new or 1))  # each mixed request's new documents
        rss = [_rss_mib(proxy.pid)]
        stop_at = time.monotonic() + duration

        async def client(number: int) -> None:
            nonlocal errors
            turn = number
            while time.monotonic() < stop_at:
                query = turn % QUERIES
                turn += CLIENTS
                docs = _documents(query, 0, DOCUMENTS - new)
                if new:
                    docs += _documents(query, next(fresh), new)
                started = time.perf_counter()
                status = await _post(session, url, query, docs)
                latencies.append(time.perf_counter() - started)
                errors += status != 200

        async def sample_rss() -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(1.0)
                rss.append(_rss_mib(proxy.pid))

        began = time.perf_counter()
        await asyncio.gather(sample_rss(), *(client(n) for n in range(CLIENTS)))
        return Phase(time.perf_counter() - began, latencies, errors, rss)


def _run_phase(ctx: Context, name: str, duration: float, latency: float, new: int) -> Phase:
    with ServerProcess(latency=latency) as upstream:
        proxy = ProxyProcess(upstream.base_url, ctx.tmp / f"serve-{name}")
        try:
            log(f"serve: {name} for {duration:g} s")
            return asyncio.run(_load(proxy, duration=duration, new=new))
        finally:
            proxy.close()


def _rows(section: str, label: str, phase: Phase, rss_target: bool) -> list[Row]:
    lat = phase.latencies
    p50, p99 = (percentile(lat, 0.5), percentile(lat, 0.99)) if lat else (0.0, 0.0)
    rss = phase.rss_mib
    growth = phase.second_half_growth()
    data = {
        "seconds": phase.seconds,
        "requests": len(lat),
        "errors": phase.errors,
        "requests_per_second": phase.requests_per_second,
        "p50_s": p50,
        "p99_s": p99,
        "rss_mib": rss,
    }
    return [
        Row(
            section,
            f"{label}: requests/s (documents/s), {CLIENTS} clients, {phase.seconds:.0f} s",
            "—",
            f"{phase.requests_per_second:,.0f} ({phase.requests_per_second * DOCUMENTS:,.0f}); "
            f"{len(lat):,} requests, {phase.errors} errors",
            None,
            data,
        ),
        Row(section, f"{label}: latency p50 / p99", "—", f"{ms(p50)} / {ms(p99)}"),
        Row(
            section,
            f"{label}: proxy RSS first / half-way / last (peak)",
            f"flat: 2nd half grows < {FLAT_MIB:g} MiB" if rss_target else "—",
            f"{rss[0]:.1f} / {rss[len(rss) // 2]:.1f} / {rss[-1]:.1f} MiB "
            f"({max(rss):.1f}); 2nd half {growth:+.1f} MiB",
            growth < FLAT_MIB if rss_target else None,
            {"second_half_growth_mib": growth},
        ),
    ]


def bench_serve(ctx: Context) -> list[Row]:
    """64 clients of 100-document requests through the proxy: all hits, then 20 % new."""
    section = "10 caching proxy"
    duration = ctx.serve_duration or (3.0 if ctx.quick else 20.0)
    hit = _run_phase(ctx, "all-hit", duration, 0.0, 0)
    mixed = _run_phase(ctx, "mixed", duration, UPSTREAM_LATENCY, NEW)
    return [
        *_rows(section, f"all-hit ({DOCUMENTS} cached docs)", hit, True),
        *_rows(section, f"mixed ({NEW} new of {DOCUMENTS}, upstream 300 ms)", mixed, False),
    ]


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "serve", *sys.argv[1:]]))
