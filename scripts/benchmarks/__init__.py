"""The benchmarks behind ``scripts/bench.py``: one module per row of the table.

======  ===============  ==================================================================
row     ``--only`` name  module
======  ===============  ==================================================================
1       ``hit``          :mod:`benchmarks.hit` — the all-hits path next to the floor
2       ``traffic``      :mod:`benchmarks.traffic` — documents and tokens sent vs the floor
3       ``cold``         :mod:`benchmarks.cold` — 2,000 uncached documents vs one request
4       ``processes``    :mod:`benchmarks.processes` — 4 processes on one cache directory
5       ``warm``         :mod:`benchmarks.warm` — ``rerank-cache warm``: pairs/s, peak RSS
6       ``stats``        :mod:`benchmarks.stats` — ``rerank-cache stats`` on 1M entries
7       ``redis``        :mod:`benchmarks.redis_hit` — the hit path on Redis vs diskcache
8       ``loop``         :mod:`benchmarks.loop` — event-loop lag during ``arerank``
9       ``expire``       :mod:`benchmarks.expire` — a writer's wait during ``clear --expired``
10      ``serve``        :mod:`benchmarks.serve` — ``rerank-cache serve`` under 64 clients
======  ===============  ==================================================================

Shared parts: :mod:`benchmarks.common` (constants, the table row, number formats, the local
servers, child processes; also the only place that imports ``rerank_cache`` internals),
:mod:`benchmarks.workload` (the seeded corpus and query workload), :mod:`benchmarks.report`
(machine description, table) and :mod:`benchmarks.run` (the command line, the row registry).

Run all rows, or one alone, from the repository root::

    python scripts/bench.py [--quick] [--json FILE]
    python scripts/bench.py --only hit [--quick]
    PYTHONPATH=scripts python -m benchmarks.hit [--quick]
"""
