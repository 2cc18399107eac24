"""Row 2, API traffic: documents and tokens sent for a seeded workload of overlapping
queries by zvec's own ``QwenReRanker``, a request-level cache and this project, next to the
floor (the unique (model, instruct, query, text) pairs).

Alone, from the repository root: ``python scripts/bench.py --only traffic [--quick]``
or ``PYTHONPATH=scripts python -m benchmarks.traffic [--quick]``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.common import (
    API_KEY,
    FIELD,
    MODEL,
    SEED,
    Context,
    DashScopeServer,
    Row,
    count_tokens,
    local_server,
    reranker_for,
)
from benchmarks.workload import Request, make_workload, request_texts
from rerank_cache import ScoreCache


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


if __name__ == "__main__":
    from benchmarks.run import main

    sys.exit(main(["--only", "traffic", *sys.argv[1:]]))
