"""Vector search with zvec, then rerank with DashScope: the first thing to run.

    python scripts/demo.py [--query TEXT] [--candidates N] [--topn N]

Loads the sample corpus into a zvec collection in a temporary directory, fetches a wide
candidate pool by vector search, reranks the pool with ``QwenReRanker`` behind a score cache
(in the same temporary directory) and prints the best few with timings and DashScope usage;
then reranks again to show the cache answering without sending anything.

With ``DASHSCOPE_API_KEY`` set it calls DashScope (``DASHSCOPE_HTTP_BASE_URL`` or the default
endpoint, and it bills tokens). Without it, a local offline server stands in, whose scores are
deterministic word-overlap stand-ins rather than real model scores. Needs the ``zvec`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from rerank_cache import QwenReRanker, RerankCacheError, ScoreCache
from rerank_cache.examples import CONTENT_VECTOR, build_collection, embed
from rerank_cache.testing import DashScopeServer

try:
    from zvec import Query
except ImportError:
    sys.exit("The demo needs zvec: pip install 'rerank-cache[zvec]'")

QUESTION = "How do I cache search results so repeated queries are fast and cheap?"


def positive_int(text: str) -> int:
    """Parse a command-line integer that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    parser = argparse.ArgumentParser(
        description="Vector search with zvec, then rerank with DashScope."
    )
    parser.add_argument("--query", default=QUESTION, help="the question to search for")
    parser.add_argument(
        "--candidates", type=positive_int, default=30, help="vector-search pool (default 30)"
    )
    parser.add_argument("--topn", type=positive_int, default=5, help="results kept (default 5)")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        api_key = os.environ.get("DASHSCOPE_API_KEY", "").strip()
        base_url = None  # QwenReRanker falls back to DASHSCOPE_HTTP_BASE_URL, then the default.
        if not api_key:
            server = stack.enter_context(DashScopeServer())
            api_key, base_url = "sk-offline-demo", server.base_url
            print(
                "DASHSCOPE_API_KEY is not set: using the local offline DashScope server\n"
                "(rerank_cache.testing.DashScopeServer). Its scores are deterministic\n"
                "word-overlap stand-ins, not real model scores. Set DASHSCOPE_API_KEY to call\n"
                "DashScope.\n"
            )

        started = time.perf_counter()
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="rerank-cache-demo-"))
        collection = build_collection(Path(workdir) / "corpus")
        # zvec holds files open: close the collection before its directory is removed.
        stack.callback(collection.close)
        build_ms = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        pool = collection.query(
            Query(field_name=CONTENT_VECTOR, vector=embed(args.query)), topk=args.candidates
        )
        search_ms = (time.perf_counter() - started) * 1000
        # zvec's cosine score is a distance: 0 is identical, lower is closer.
        vector = {doc.id: (position, doc.score) for position, doc in enumerate(pool, 1)}

        try:
            cache = stack.enter_context(ScoreCache(Path(workdir) / "scores"))
            reranker = QwenReRanker(
                query=args.query,
                topn=args.topn,
                rerank_field="content",
                api_key=api_key,
                base_url=base_url,
            ).cached(cache)
            started = time.perf_counter()
            best = reranker.rerank([pool])
            rerank_ms = (time.perf_counter() - started) * 1000
            sent = reranker.usage.documents
            started = time.perf_counter()
            again = reranker.rerank([pool])
            cached_ms = (time.perf_counter() - started) * 1000
        except RerankCacheError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        same = [(d.id, d.score) for d in again] == [(d.id, d.score) for d in best]

        print(f"Query:     {args.query}")
        print(f"Reranker:  {reranker.model} at {reranker.base_url}")
        print(f"Reranked the top {len(pool)} vector-search hits; best {len(best)}:\n")
        row = "{:>4}  {:<8}  {:>6}  {:>8}  {:>5}  {}"
        print(row.format("rank", "id", "rerank", "vec dist", "vec #", "title"))
        for rank, doc in enumerate(best, 1):
            position, distance = vector[doc.id]
            scores = f"{doc.score:.3f}", f"{distance:.3f}"
            print(row.format(rank, doc.id, *scores, position, doc.field("title")))
        usage = reranker.usage
        print(
            f"\nTimings:   build collection {build_ms:.0f} ms, vector search {search_ms:.1f} ms, "
            f"rerank {rerank_ms:.0f} ms"
        )
        print(
            f"DashScope: {usage.requests} request(s), {usage.documents} documents, "
            f"{usage.total_tokens} tokens"
        )
        stats = cache.stats()
        print(
            f"Cached:    the same rerank again took {cached_ms:.2f} ms, sent "
            f"{usage.documents - sent} documents, same results: {'yes' if same else 'NO'} "
            f"(cache: {stats.entries} scores, {stats.hits} hits, {stats.misses} misses)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
