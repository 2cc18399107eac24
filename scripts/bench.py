"""Benchmarks of rerank-cache against the local DashScope server; prints a markdown table.

    python scripts/bench.py [--quick] [--only NAME]... [--serve-duration SECONDS] [--json FILE]

Measurements (``--only`` takes these names; each lives in its own module under
``scripts/benchmarks/``, which also runs it alone: ``PYTHONPATH=scripts python -m
benchmarks.<module> [--quick]``):

* ``hit`` (``benchmarks.hit``) — ``CachedReRanker.rerank`` on 100 cached candidates next to
  the floor measured on the same store (xxhash of the 100 texts plus one
  ``ScoreCache.get_many``), with a breakdown.
* ``traffic`` (``benchmarks.traffic``) — documents and tokens sent for a seeded workload of
  overlapping queries by zvec's own ``QwenReRanker``, a request-level cache and this project,
  next to the floor (the unique (model, instruct, query, text) pairs).
* ``cold`` (``benchmarks.cold``) — 2,000 uncached documents with 300 ms of server latency
  next to one request.
* ``processes`` (``benchmarks.processes``) — 4 processes reranking overlapping pairs on one
  cache directory.
* ``warm`` (``benchmarks.warm``) — ``rerank-cache warm`` on a JSONL file: pairs per second
  and peak RSS.
* ``stats`` (``benchmarks.stats``) — ``rerank-cache stats`` on a one-million-entry cache
  (built once, reused).
* ``redis`` (``benchmarks.redis_hit``) — the hit path on a private ``redis-server`` next to
  diskcache, same run.
* ``loop`` (``benchmarks.loop``) — event-loop lag while ``arerank`` scores 2,000 uncached
  documents, next to the blocking ``rerank`` called inside the loop.
* ``serve`` (``benchmarks.serve``) — ``rerank-cache serve`` in its own process under 64
  clients of 100-document requests, all hits and then 20 new documents per request against a
  300 ms upstream: requests/s, p50/p99 and the proxy's RSS once a second
  (``--serve-duration`` seconds per phase; 300 for issue 17's five-minute run).

Every request goes to :class:`rerank_cache.testing.DashScopeServer` on 127.0.0.1 (never to
DashScope): nothing is billed and no key is needed. The server runs in this process, except
for ``cold``, ``loop`` and ``serve``, where it runs in a child process so that its own CPU
work (parsing and scoring 2,000 documents) does not hold the client's GIL, as the real,
remote service would not. ``--quick`` finishes in under a minute; the full run takes a few
minutes on a 2-core machine (about a minute more the first time, to build the million-entry
cache). Progress goes to stderr, the machine description and the table to stdout.
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder (scripts/) is first on sys.path: the package is found there.
from benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main())
