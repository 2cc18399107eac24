"""Row 3, the cold path: 2,000 uncached documents with 300 ms of server latency next to
one request of 150 (about what each of the 2,000's requests carries). The server runs in a
child process (:class:`~benchmarks.common.ServerProcess`) so that its own CPU work does not
hold the client's GIL, as the real, remote service would not.

Alone, from the repository root: ``python scripts/bench.py --only cold [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.cold [--quick]``.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from benchmarks.common import (
    DEFAULT_MAX_CONCURRENCY,
    SEED,
    Context,
    Row,
    ServerProcess,
    assemble,
    ms,
    reranker_for,
)
from rerank_cache import CachedReRanker, ScoreCache

#: Server processes of the second setting: enough that no child scores more than a few of
#: a wave's 12 requests, few enough for a two-core machine.
PARALLEL_SERVER = 4


def bench_cold(ctx: Context) -> list[Row]:
    """2,000 uncached documents with 300 ms per request, next to one 150-document request.

    First against one server process (the judged rows), then against :data:`PARALLEL_SERVER`
    processes sharing its port: one process reads and scores a wave's requests one at a
    time under its GIL, so the last ones arrive late; DashScope serves them in parallel.
    """
    rng = random.Random(SEED + 3)
    rows = _bench_setting(ctx, rng, processes=1)
    rows += _bench_setting(ctx, rng, processes=PARALLEL_SERVER)
    return rows


def _bench_setting(ctx: Context, rng: random.Random, *, processes: int) -> list[Row]:
    latency = 0.3
    corpus = ctx.corpus
    section = "3 cold path"
    repeats = 3 if ctx.quick else 5
    rows: list[Row] = []
    parallel = processes > 1
    server_label = (
        f", local server in {processes} processes (DashScope serves requests in parallel)"
        if parallel
        else ""
    )
    with (
        ServerProcess(latency, processes=processes) as server,
        ScoreCache(ctx.tmp / f"cold-{processes}") as cache,
    ):
        base = reranker_for(server.base_url, cache)
        singles = []
        for attempt in range(repeats):
            docs = corpus.docs(rng.sample(range(len(corpus.ids)), 150))
            reranker = base.with_query(f"one small request number {attempt}")
            started = time.perf_counter()
            reranker.rerank([docs])
            singles.append(time.perf_counter() - started)
        one = statistics.median(singles)
        rows.append(
            Row(
                section,
                f"one request: 150 uncached docs through CachedReRanker{server_label} "
                f"(median of {repeats})",
                "—",
                ms(one),
                None,
                {"s": one, "server_processes": processes},
            )
        )
        n_docs = 2_000
        docs = corpus.docs(rng.sample(range(len(corpus.ids)), n_docs))
        results = [docs]

        # One long-lived reranker per setting, as an application keeps one (and as `base`
        # above): each cold call is a with_query copy sharing its threads and connections.
        clients: dict[int, CachedReRanker] = {}

        def cold(concurrency: int, tag: str) -> tuple[float, int, float, float, int]:
            """rerank() spelled out, so each request's arrival can be timed (on_batch)."""
            if concurrency not in clients:
                clients[concurrency] = reranker_for(
                    server.base_url, cache, max_concurrency=concurrency
                )
            reranker = clients[concurrency].with_query(f"cold start of a new query {tag}")
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
                    f"{label}{server_label}, median of {repeats}",
                    "<= 1.25x one request" if judged else "—",
                    f"{ms(wall)} = {ratio:.2f}x (range {runs[0][0] / one:.2f}-"
                    f"{runs[-1][0] / one:.2f}x; first request stored at {ms(first)}, "
                    f"last at {ms(last)})",
                    ratio <= 1.25 if judged else None,
                    {
                        "s": wall,
                        "requests": requests,
                        "concurrency": concurrency,
                        "server_processes": processes,
                    },
                )
            )
            return ratio, requests

        default = f"max_concurrency={DEFAULT_MAX_CONCURRENCY} (default)"
        if parallel:
            # Not judged: which server model the target is judged on is the lead's call.
            row(DEFAULT_MAX_CONCURRENCY, default, judged=False)
        else:
            row(DEFAULT_MAX_CONCURRENCY, default)
            row(4, "max_concurrency=4 (for comparison: three waves)", judged=False)
    return rows


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "cold", *sys.argv[1:]]))
