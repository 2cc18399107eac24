"""``RedisClusterScoreCache``: the Redis store on a Redis Cluster.

A Redis Cluster spreads keys over 16,384 hash slots held by several primaries, and refuses
a multi-key command (``MGET``, ``MULTI``) whose keys are in different slots. The layout
differs from :mod:`rerank_cache.stores.redis_format` only by hash tags (the part of a key
name between the first ``{`` and the next ``}`` is all that picks the slot)::

    {ns}:s:{tag}{key}   one score; tag = the key's query tag (rerank_cache.keys.query_tag),
                        the same for every key of one (model, instruct, query)
    {{ns}}:counters     the counters hash, in the namespace's slot
    {{ns}}:entries      the entry buckets, in the same slot
    {ns}:c:{tag}{key}   a claim on a score being fetched, in its score's slot

So the reads of one call are one ``MGET`` on one primary, as on a single Redis; keys of
several queries in one lookup are read with one ``MGET`` per slot, pipelined per primary.
A write cannot be one ``MULTI`` (its scores and counters live in two slots): it is one
pipeline, sent per primary, so a failure can apply the scores without the counters (the
counts drift until ``check --fix`` recounts). ``SCAN`` (``clear``, ``check``) walks every
primary. Nothing connects until first use.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import xxhash
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from ..keys import HASH_DIGITS, QUERY_TAG_DIGITS, key_head, query_tag
from .flusher import CounterWriter
from .redis import _UNREACHABLE, RedisScoreCache, _write_counters
from .redis_admin import GLOB_SPECIAL
from .redis_format import CLUSTER_SCHEMES

__all__ = ["CLUSTER_SCHEMES", "RedisClusterScoreCache", "cluster_tag"]

_FOREIGN_TAG_DIGITS = 16


def cluster_tag(key: str) -> str:
    """The hash tag a store key's score is filed under on a cluster.

    The key's query tag; a key not in the current format (only ever a miss) gets a longer
    hash of itself, so it can never be taken for a current key's name.

    Example:
        >>> from rerank_cache import score_key
        >>> a, b = score_key("m", None, "q", "a"), score_key("m", None, "q", "b")
        >>> cluster_tag(a) == cluster_tag(b)
        True
    """
    tag = query_tag(key)
    if tag is not None:
        return tag
    return xxhash.xxh3_64_hexdigest(key.encode("utf-8", "surrogatepass"))[:_FOREIGN_TAG_DIGITS]


class RedisClusterScoreCache(RedisScoreCache):
    """A store of rerank scores on a Redis Cluster (see the module docs for the layout).

    Same arguments and behaviour as :class:`~rerank_cache.stores.redis.RedisScoreCache`,
    except that the URL is ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS)
    naming any one node of the cluster (the client finds the others); a ready client is not
    accepted. ``stats().size_bytes`` is the sum of
    ``used_memory`` over the primaries.

    Example:
        >>> cache = RedisClusterScoreCache("redis+cluster://:pw@10.0.0.5:7000", namespace="s")
        >>> cache.location
        'redis+cluster://:***@10.0.0.5:7000?namespace=s'
        >>> cache.close()
    """

    _failures = (RedisError, RedisClusterException, OSError)
    _unreachable = (*_UNREACHABLE, RedisClusterException)
    _schemes = CLUSTER_SCHEMES
    _use = "use redis+cluster:// or rediss+cluster://"
    _transaction = False

    _lazy: _LazyCluster

    @property
    def _client(self) -> Any:
        return self._lazy.get()

    @_client.setter
    def _client(self, value: _LazyCluster) -> None:
        self._lazy = value

    def _counter_writer(self) -> CounterWriter:
        # Not the base's: that one would take the client now, connecting at construction.
        lazy, key = self._lazy, self._counters_key

        def write(counters: Mapping[str, Counter[str]]) -> None:
            _write_counters(lazy.get(), key, counters, transaction=False)

        return write

    def _connect(self, url: str, timeout: float) -> _LazyCluster:
        parts = urlsplit(url)
        path = parts.path.strip("/")
        if path not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
        plain = urlunsplit(
            parts._replace(scheme=parts.scheme.split("+")[0], path="", query=parts.query)
        )
        if not parts.hostname:
            raise ValueError("no host named")

        def factory() -> RedisCluster:
            return RedisCluster.from_url(
                plain,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # As for one Redis: no backoff, so a slow or dead cluster fails open fast.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )

        return _LazyCluster(factory)

    def _describe_client(self, client: Any) -> str:
        node = client.get_default_node()
        host, port = (node.host, node.port) if node is not None else ("?", 0)
        return f"redis+cluster://{host}:{port}"

    def __repr__(self) -> str:
        return f"RedisClusterScoreCache({self.location!r}, ttl={self._ttl!r})"

    @property
    def _where(self) -> str:
        return f"Redis Cluster at {self.location}"

    def _score_key(self, key: str) -> str:
        return f"{self._score_prefix}{{{cluster_tag(key)}}}{key}"

    def _store_key(self, name: str) -> str | None:
        head = self._score_prefix + "{"
        end = name.find("}", len(head))
        if not name.startswith(head) or end < 0:
            return None
        key = name[end + 1 :]
        return key if name[len(head) : end] == cluster_tag(key) else None

    def _score_pattern(self, model: str | None) -> str:
        if model is None:
            return self._score_prefix + "{*"
        escaped = GLOB_SPECIAL.sub(r"\\\1", model)
        tag = "?" * QUERY_TAG_DIGITS
        return f"{self._score_prefix}{{{tag}}}{key_head(escaped)}" + "?" * HASH_DIGITS

    def _meta_key(self, name: str) -> str:
        return f"{{{self._namespace}}}:{name}"

    def _mget(self, names: list[str]) -> list[Any]:
        return list(self._client.mget_nonatomic(names))

    def _stats_replies(self) -> tuple[Any, Any, int]:
        client = self._client
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(self._counters_key)
        pipe.hgetall(self._entries_key)
        counters_raw, entries_raw = pipe.execute()
        try:
            memory = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        except self._failures:
            return counters_raw, entries_raw, 0
        return counters_raw, entries_raw, _used_memory(memory)

    def _release(self) -> None:
        self._lazy.close()


class _LazyCluster:
    """A RedisCluster made on first use, and closed only if it was made.

    RedisCluster connects in its constructor (to learn the slots): made on first use, a
    cluster that is down fails open like an unreachable single Redis.
    """

    __slots__ = ("_client", "_factory", "_lock")

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def get(self) -> RedisCluster:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _used_memory(reply: Any) -> int:
    """``used_memory`` summed over the primaries' ``INFO memory`` replies."""
    if not isinstance(reply, dict):
        return 0
    if "used_memory" in reply:
        return int(reply["used_memory"])
    return sum(int(part.get("used_memory", 0)) for part in reply.values() if isinstance(part, dict))
