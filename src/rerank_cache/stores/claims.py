"""Claims on in-flight pairs, so processes sharing a store never send the same pair twice.

Off by default (``CachedReRanker(..., claims=True)`` turns it on). Within one process the
single flight (:mod:`rerank_cache.singleflight`) already sends each miss once; across
processes two callers that miss the same pair at once would both pay for it (counted as
``duplicate_sends``). With claims, a caller that is about to send its misses first claims
them in one short write transaction; keys another live process holds are waited for (their
scores land in the store) instead of being sent again.

The cost is kept to the misses: a call that hits everything never touches the claims; one
that misses runs one claim transaction before its requests and one release after them, and
a waiter polls with two reads (the scores, then which claims are still live). A claim lasts
a ``lease`` (by default twice the request timeout, the
:data:`DEFAULT_LEASE` when the reranker names none): a claimer that crashed holds its keys
no longer than that, after which another process takes them over.

Storage trouble fails open, like the store: a claim that cannot be written counts as ours
(the pair may be sent twice, never lost), a poll that cannot read stops waiting.

The disk store (:class:`~rerank_cache.stores.disk.ScoreCache`) keeps its claims in a small
table of its SQLite file (:data:`~rerank_cache.stores.sqlite.CLAIMS_TABLE`, :class:`DiskClaims`);
the Redis and Redis Cluster stores keep them as keys next to the scores, expiring with the
lease (:class:`~rerank_cache.stores.redis_claims.RedisClaims`). Other stores have none.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..errors import ConfigurationError
from . import sqlite
from .claimer import Claimer
from .protocols import ScoreStore

__all__ = ["DEFAULT_LEASE", "Claims", "DiskClaims", "claims_for", "wait_for_claimed"]

logger = logging.getLogger("rerank_cache")

#: Seconds a claim lasts when the reranker has no ``timeout`` to derive it from.
DEFAULT_LEASE = 60.0
# Polling a claimed key: first wait, growth, ceiling (seconds). A score usually lands one
# request latency after the claim, so the first polls are frequent and later ones sparse.
_FIRST_POLL = 0.005
_POLL_GROWTH = 1.5
_LONGEST_POLL = 0.1


class Claims(Protocol):
    """Cross-process claims on keys about to be fetched."""

    def claim(self, keys: list[str]) -> set[str]:
        """Claim ``keys``; return those this process now holds (the rest are held elsewhere)."""

    def release(self, keys: list[str]) -> None:
        """Drop this process's claims on ``keys`` (their scores are stored, or failed)."""

    def held(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` some process holds a live claim on."""


class DiskClaims(Claimer):
    """Claims in a table of a disk store's SQLite file, through connections of their own.

    Args:
        db: the store's ``cache.db``.
        lease: seconds a claim lasts unless released.
        timeout: seconds a claim or release waits for another process's write lock.
        clock: the wall clock (claims are compared across processes); by default
            ``time.time``, read at each call.
    """

    def __init__(
        self,
        db: Path,
        *,
        lease: float,
        timeout: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(lease=lease)
        self._db = db
        self._timeout = timeout
        self._clock = clock
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"DiskClaims({str(self._db)!r}, lease={self._lease!r})"

    def _now(self) -> float:
        return time.time() if self._clock is None else self._clock()

    def _con(self) -> sqlite3.Connection:
        # One connection per thread and process (sqlite3 objects must not cross either).
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = sqlite3.connect(self._db, timeout=self._timeout, isolation_level=None)
            con.execute(sqlite.CREATE_CLAIMS_TABLE)
            self._local.con, self._local.pid = con, os.getpid()
        return con

    def claim(self, keys: list[str]) -> set[str]:
        """Claim ``keys`` for one lease; return those this process holds. Fails open."""
        if not keys:
            return set()
        now = self._now()
        try:
            return sqlite.claim_keys(self._con(), keys, self.owner, now, now + self._lease)
        except sqlite3.Error as exc:
            logger.warning("rerank-cache: could not claim %d key(s) (%s)", len(keys), exc)
            return set(keys)

    def release(self, keys: list[str]) -> None:
        """Drop this process's claims on ``keys`` (expired claims go too). Fails open: an
        unreleased claim ends with its lease."""
        if not keys:
            return
        try:
            sqlite.release_keys(self._con(), keys, self.owner, self._now())
        except sqlite3.Error as exc:
            logger.warning("rerank-cache: could not release %d claim(s) (%s)", len(keys), exc)

    def held(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` have a live claim. Fails open: none (the caller stops waiting)."""
        try:
            return sqlite.claimed_keys(self._con(), keys, self._now())
        except sqlite3.Error as exc:
            logger.warning("rerank-cache: could not read claims (%s)", exc)
            return set()


def claims_for(store: ScoreStore, *, lease: float, timeout: float = 5.0) -> Claims:
    """The claims of ``store``: :class:`DiskClaims` for a disk store,
    :class:`~rerank_cache.stores.redis_claims.RedisClaims` for a Redis or Redis Cluster one.

    Args:
        store: the store the claims live in.
        lease: seconds a claim lasts unless released.
        timeout: for the disk store, seconds a claim or release waits for another process's
            write lock (a Redis store's own socket timeout bounds its claims).

    Raises:
        ConfigurationError: the store has no claims (it is neither of those).
    """
    from .disk import ScoreCache  # only a claiming reranker loads the disk store here

    if isinstance(store, ScoreCache):
        return DiskClaims(store.directory / sqlite.DB_NAME, lease=lease, timeout=timeout)
    # A Redis store exists only once its module is loaded: no other store imports redis-py.
    if "rerank_cache.stores.redis" in sys.modules:
        from .redis import RedisScoreCache
        from .redis_claims import RedisClaims

        if isinstance(store, RedisScoreCache):
            return RedisClaims(store, lease=lease)
    raise ConfigurationError(
        "claims=True needs a store with claims (ScoreCache, RedisScoreCache or "
        f"RedisClusterScoreCache), not {type(store).__name__}; pass a Claims object "
        "of your own as claims= instead"
    )


def wait_for_claimed(
    store: ScoreStore,
    claims: Claims,
    keys: list[str],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, float]:
    """Wait for keys other processes claimed: return the scores that landed (key -> score).

    Polls with a growing pause until every key has a score or no live claim; a key left
    without either (its claimer failed, released or died) is for the caller to claim again.
    """
    found: dict[str, float] = {}
    waiting = list(keys)
    pause = _FIRST_POLL
    while waiting:
        sleep(pause)
        pause = min(pause * _POLL_GROWTH, _LONGEST_POLL)
        found.update(store.get_many(waiting))
        waiting = [key for key in waiting if key not in found]
        if waiting:
            live = claims.held(waiting)
            waiting = [key for key in waiting if key in live]
    return found
