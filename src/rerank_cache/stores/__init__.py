"""The score stores: what a store is, the two backends, and opening one by path or URL.

Modules, lowest first (each imports only modules above it in this list):

* ``counters``: ``PendingCounters``, usage counters kept in memory between writes.
* ``stats``: ``CacheStats``, ``ModelStats``, ``CheckReport``, the counter
  names every store keeps, and ``build_stats`` that assembles the stats of any store.
* ``protocols``: the ``ScoreStore`` protocol (the request path) and ``AdminStore``
  (what the ``rerank-cache`` command uses), ``Purpose``, the TTL argument and
  ``finite_scores``. Imports nothing concrete (no diskcache, no redis).
* ``flusher``: the process's background counter flush, the registry of open stores it
  walks, counters of stores collected without ``close()``, and the flush at exit.
* ``base``: ``StoreBase``, which owns what every backend shares: pending counters and
  their flush, the memory tier, the context manager and fail-open logging.
* ``open``: where a store lives (``default_cache_dir``, ``secure_directory``), telling a
  directory from a Redis URL (``resolve_cache_url``), and ``open_store``.
* ``safedisk``: ``SafeDisk``, the diskcache serialisation that never unpickles.
* ``sqlite``: every SQL statement on diskcache's tables and our counters table.
* ``disk_admin``: ``DiskAdmin``, the disk store's maintenance (stats, clear, expire,
  count, check, export and import), ``read_stats`` and ``repair_settings``.
* ``disk``: ``ScoreCache``, the store on diskcache: opening and the request path.
* ``claims``: cross-process claims on in-flight pairs (``CachedReRanker(claims=True)``),
  a table beside the disk store's scores.
* ``redis_format``: the Redis store's key layout, parsing and URL redaction (no redis-py).
* ``redis_check``: the Redis store's integrity check.
* ``redis_admin``: ``RedisAdmin``, the Redis store's key names and maintenance.
* ``redis``: ``RedisScoreCache``, the store on Redis (needs the optional redis-py):
  connecting, failing open and the request path.
* ``redis_cluster``: ``RedisClusterScoreCache``, the Redis store on a Redis Cluster.
* ``claimer``: ``Claimer``, the lease and owner name every kind of claims has.
* ``redis_claims``: ``RedisClaims``, the claims of the Redis stores (keys beside the scores).

A new backend subclasses :class:`~rerank_cache.stores.base.StoreBase`, implements
``get_many``, ``put_many``, ``stats`` and the admin methods plus the base's hooks, and runs
the contract suite in ``tests/test_store_contract.py``.

This package imports nothing itself: ``import rerank_cache.stores.disk`` loads only what the
disk store needs.
"""
