"""The score stores: what a store is, the two backends, and opening one by path or URL.

Modules, lowest first (each imports only modules above it in this list):

* ``counters``: ``PendingCounters``, usage counters kept in memory between writes.
* ``stats``: ``CacheStats``, ``ModelStats``, ``CheckReport``, the counter
  names every store keeps, and ``build_stats`` that assembles the stats of any store.
* ``base``: the ``ScoreStore`` protocol (the request path) and ``AdminStore``
  (what the ``rerank-cache`` command uses), the TTL argument, ``finite_scores``, and
  ``StoreBase``, which owns what every backend shares: pending counters and their
  flush, the flush of open stores at exit, the context manager and fail-open logging.
  Imports nothing concrete (no diskcache, no redis).
* ``open``: where a store lives (``default_cache_dir``, ``secure_directory``), telling a
  directory from a Redis URL (``resolve_cache_url``), and ``open_store``.
* ``safedisk``: ``SafeDisk``, the diskcache serialisation that never unpickles.
* ``sqlite``: every SQL statement on diskcache's tables and our counters table.
* ``disk``: ``ScoreCache``, the store on diskcache, and ``read_stats``.
* ``claims``: cross-process claims on in-flight pairs (``CachedReRanker(claims=True)``),
  a table beside the disk store's scores.
* ``redis_format``: the Redis store's key layout, parsing and URL redaction (no redis-py).
* ``redis``: ``RedisScoreCache``, the store on Redis (needs the optional redis-py).

A new backend subclasses :class:`~rerank_cache.stores.base.StoreBase`, implements
``get_many``, ``put_many``, ``stats`` and the admin methods plus the base's hooks, and runs
the contract suite in ``tests/test_store_contract.py``.

This package imports nothing itself: ``import rerank_cache.stores.disk`` loads only what the
disk store needs.
"""
