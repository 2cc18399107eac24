"""``RedisClaims``: claims on in-flight pairs in the Redis (or Redis Cluster) store.

The Redis side of :mod:`rerank_cache.stores.claims` (same semantics as its ``DiskClaims``).
One key per claimed score key, next to the scores in the store's namespace::

    {ns}:c:{key}          on one Redis: the owner's name, expiring with the lease (PX)
    {ns}:c:{tag}{key}     on a cluster: the score key's hash tag, so a call's claims share
                          the slot of its scores (one query tag per call)

A claim is ``SET ... NX PX lease`` for every key in one pipeline (one round trip; the keys
whose ``SET`` answered are ours, and so are keys that hold anything without an expiry: never
a claim, and they would be waited for forever). A release is a Lua script that deletes only
the keys whose value is our owner's name (one call, per hash slot on a cluster), so another
process's claim is never dropped. Which claims are live is one ``MGET`` (per slot on a
cluster). The lease is Redis's own expiry: a crashed claimer's keys vanish after it,
whatever the clocks of the hosts say.

Storage trouble fails open, like ``DiskClaims`` and like the store it shares the connection
and the "Redis is down" pause with: a claim that cannot be written counts as ours (the pair
may be sent twice, never lost), a release that fails leaves the claim to its lease, and a
read that fails says nothing is held (waiters stop waiting).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

from .claimer import Claimer
from .redis import RedisScoreCache

__all__ = ["RELEASE_SCRIPT", "RedisClaims"]

logger = logging.getLogger("rerank_cache")

#: Deletes each of KEYS that holds ARGV[1] (our owner's name); returns how many it deleted.
RELEASE_SCRIPT = """
local released = 0
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then
        released = released + redis.call('DEL', key)
    end
end
return released
"""


class RedisClaims(Claimer):
    """Claims in the keyspace of a :class:`~rerank_cache.stores.redis.RedisScoreCache` (or
    :class:`~rerank_cache.stores.redis_cluster.RedisClusterScoreCache`), through its client.

    Args:
        store: the store whose Redis (and namespace) holds the claims.
        lease: seconds a claim lasts unless released (rounded up to whole milliseconds).

    Example:
        >>> from rerank_cache.stores.redis import RedisScoreCache
        >>> store = RedisScoreCache("redis://:s3cret@localhost:6379/0", namespace="search")
        >>> RedisClaims(store, lease=60)
        RedisClaims('redis://:***@localhost:6379/0?namespace=search', lease=60)
        >>> store.close()
    """

    def __init__(self, store: RedisScoreCache, *, lease: float) -> None:
        super().__init__(lease=lease)
        self._store = store
        self._lease_ms = max(1, math.ceil(lease * 1000))
        self._prefix = f"{store.namespace}:c:"

    def __repr__(self) -> str:
        return f"RedisClaims({self._store.location!r}, lease={self._lease!r})"

    def claim_key(self, key: str) -> str:
        """The Redis key of a claim on store key ``key`` (in its score's hash slot)."""
        name: str = self._store._score_key(key)
        return self._prefix + name[len(self._store._score_prefix) :]

    def claim(self, keys: list[str]) -> set[str]:
        """Claim ``keys`` for one lease; return those this process holds. Fails open."""
        if not keys or self._store._is_down():
            return set(keys)
        owner = self.owner
        try:
            pipe = self._store._client.pipeline(transaction=False)
            for key in keys:
                name = self.claim_key(key)
                pipe.set(name, owner, nx=True, px=self._lease_ms)
                pipe.get(name)
                pipe.pttl(name)
            # A GET of a planted key of another type fails alone (WRONGTYPE): not ours.
            replies = pipe.execute(raise_on_error=False)
        except self._store._failures as exc:
            self._warn(f"could not claim {len(keys)} key(s)", exc)
            return set(keys)
        ours, junk = set(), 0
        mine = (owner, owner.encode())  # the value as the client returns it: str or bytes
        for key, taken, holder, ttl_ms in zip(
            keys, replies[::3], replies[1::3], replies[2::3], strict=True
        ):
            if taken or holder in mine:
                # Our own claim still held (a release that failed or was cancelled) is ours,
                # as on disk: waiting on it would last its whole lease.
                ours.add(key)
            elif ttl_ms == -1:
                # Every claim expires: a key without expiry is someone else's data, and
                # waiting on it would never end. Send the pair as if claims were off.
                ours.add(key)
                junk += 1
        if junk:
            logger.warning(
                "rerank-cache: %d claim key(s) in %s hold no claim (no expiry); their pairs "
                "are sent without one",
                junk,
                self._store._where,
            )
        return ours

    def release(self, keys: list[str]) -> None:
        """Drop this process's claims on ``keys``; others' claims stay. Fails open: an
        unreleased claim ends with its lease."""
        if not keys or self._store._is_down():
            return
        try:
            client = self._store._client
            script = client.register_script(RELEASE_SCRIPT)
            for names in self._by_slot(client, [self.claim_key(key) for key in keys]):
                script(keys=names, args=[self.owner])
        except self._store._failures as exc:
            self._warn(f"could not release {len(keys)} claim(s)", exc)

    def held(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` have a live claim. Fails open: none (the caller stops waiting)."""
        if not keys or self._store._is_down():
            return set()
        try:
            values = self._store._mget([self.claim_key(key) for key in keys])
        except self._store._failures as exc:
            self._warn("could not read claims", exc)
            return set()
        return {key for key, value in zip(keys, values, strict=True) if value is not None}

    def _by_slot(self, client: Any, names: list[str]) -> list[list[str]]:
        """``names`` grouped so that each group is one script call (one slot on a cluster)."""
        if self._store._transaction:  # one Redis: any keys in one call
            return [names]
        slots: defaultdict[int, list[str]] = defaultdict(list)
        for name in names:
            slots[client.keyslot(name)].append(name)
        return list(slots.values())

    def _warn(self, what: str, exc: BaseException) -> None:
        # The store's hint also starts its pause when Redis is unreachable, so the next
        # calls (claims and scores alike) skip it instead of each waiting for a timeout.
        hint = self._store._failed(exc)
        logger.warning(
            "rerank-cache: %s in %s (%s); going on without claims%s",
            what,
            self._store._where,
            self._store._describe(exc),
            hint,
        )
