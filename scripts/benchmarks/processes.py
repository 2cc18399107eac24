"""Row 4, many processes: 4 processes reranking overlapping pairs on one cache directory;
throughput, errors, and documents sent beyond the floor next to ``duplicate_sends``, once
with claims off (the default) and once with ``claims=True``; with claims on no pair may be
sent twice, at no less than 0.8x the throughput of claims off. Then the same on one private
``redis-server`` (skipped with a note when redis-server or redis-py is missing).

Alone, from the repository root: ``python scripts/bench.py --only processes [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.processes [--quick]``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from typing import Any

from benchmarks.common import (
    API_KEY,
    SEED,
    SUBPROCESS_TIMEOUT,
    Context,
    Row,
    child_env,
    local_server,
)
from benchmarks.redis_hit import redis_server
from benchmarks.workload import make_workload, request_texts
from rerank_cache import ScoreCache

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from rerank_cache import CachedReRanker, Doc, QwenReRanker, ScoreCache

    spec = json.load(open(sys.argv[1]))
    me = int(sys.argv[2])
    texts = spec["texts"]
    work = [
        (query, [[Doc(str(i), fields={"content": texts[i]}) for i in route] for route in routes])
        for query, routes in spec["requests"][me]
    ]
    cache = ScoreCache.from_url(spec["store"], **spec["options"])
    base = CachedReRanker(QwenReRanker(
        "child", topn=10, rerank_field="content", api_key=spec["api_key"],
        base_url=spec["base_url"], timeout=30.0,
    ), cache, claims=spec["claims"])
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
    """4 processes x N reranks over overlapping pairs on one cache directory, claims off
    then on."""
    n_procs = 4
    per_proc = 100 if ctx.quick else 500
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
    rows: list[Row] = []
    rows += _backend(ctx, per, pairs, section, "", None)
    with redis_server() as url:
        if url is None:
            rows.append(Row(section, "Redis: skipped (no redis-server on PATH)", "—", "—"))
        else:
            try:
                import redis  # noqa: F401  # the Redis store needs redis-py
            except ImportError:
                rows.append(Row(section, "Redis: skipped (redis-py not installed)", "—", "—"))
            else:
                rows += _backend(ctx, per, pairs, section, "Redis, ", url)
    return rows


def _backend(
    ctx: Context,
    per: list[list[tuple[str, list[list[int]]]]],
    pairs: set[tuple[str, str]],
    section: str,
    prefix: str,
    redis_url: str | None,
) -> list[Row]:
    """The race with claims off, then on, on one backend: its rows."""
    n_procs, per_proc, latency = len(per), len(per[0]), 0.05
    rows: list[Row] = []
    rates: dict[bool, float] = {}
    for claims in (False, True):
        race = _race(ctx, per, claims, latency, redis_url)
        rates[claims] = race["reranks"] / race["wall"]
        label = prefix + ("claims on" if claims else "claims off")
        extra = race["sent"] - len(pairs)
        rows += [
            Row(
                section,
                f"{label}: {n_procs} processes x {per_proc} reranks ({len(pairs):,} unique "
                f"pairs, {race['requests']} requests, server latency {latency * 1000:.0f} ms): "
                "throughput",
                "—",
                f"{rates[claims]:,.0f} reranks/s ({race['reranks']:,} in {race['wall']:.2f} s)",
                None,
                {"reranks_per_s": rates[claims], "claims": claims, "redis": bool(redis_url)},
            ),
            Row(
                section,
                f"{label}: errors",
                "0",
                f"{race['errors']}"
                + (f" ({'; '.join(race['examples'])})" if race["examples"] else ""),
                race["errors"] == 0,
            ),
            Row(
                section,
                f"{label}: documents sent beyond the floor (server documents - unique pairs)",
                "0" if claims else "allowed across processes, counted",
                f"{extra:,} ({race['sent']:,} sent, floor {len(pairs):,})",
                extra == 0 if claims else None,
                {"sent": race["sent"], "floor": len(pairs), "claims": claims},
            ),
            Row(
                section,
                f"{label}: cache.stats().duplicate_sends (must equal the row above)",
                "0, = documents beyond the floor" if claims else "= documents beyond the floor",
                f"{race['duplicate_sends']:,}",
                race["duplicate_sends"] == extra and (race["duplicate_sends"] == 0 or not claims),
            ),
        ]
    ratio = rates[True] / rates[False]
    rows.append(
        Row(
            section,
            f"{prefix}throughput with claims on / claims off",
            ">= 0.8x",
            f"{ratio:.2f}x",
            ratio >= 0.8,
            {"ratio": ratio, "redis": bool(redis_url)},
        )
    )
    return rows


def _race(
    ctx: Context,
    per: list[list[tuple[str, list[list[int]]]]],
    claims: bool,
    latency: float,
    redis_url: str | None,
) -> dict[str, Any]:
    """Start one process per request list on a fresh store, together; gather."""
    name = ("redis-" if redis_url else "") + ("processes-claims" if claims else "processes")
    store = redis_url or str(ctx.tmp / name)
    # On Redis each race has a namespace of its own: counters outlive a clear.
    options = {"namespace": f"bench-{name}"} if redis_url else {}
    with local_server(latency=latency) as server:
        spec_path = ctx.tmp / f"{name}.json"
        spec_path.write_text(
            json.dumps(
                {
                    "texts": ctx.corpus.texts,
                    "requests": per,
                    "store": store,
                    "options": options,
                    "api_key": API_KEY,
                    "base_url": server.base_url,
                    "claims": claims,
                }
            )
        )
        ScoreCache.from_url(store, **options).close()  # created once, before the race
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(spec_path), str(p)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for p in range(len(per))
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
    with ScoreCache.from_url(store, **options) as done:
        duplicate_sends = done.stats().duplicate_sends
    return {
        "sent": sent,
        "requests": requests,
        "duplicate_sends": duplicate_sends,
        "wall": max(o["ended"] for o in outputs) - min(o["started"] for o in outputs),
        "reranks": sum(o["reranks"] for o in outputs),
        "errors": sum(o["errors"] for o in outputs),
        "examples": [e for o in outputs for e in o["examples"]],
    }


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "processes", *sys.argv[1:]]))
