"""``Claimer``: what every kind of claims has, a lease and the claiming process's name.

Shared by :class:`~rerank_cache.stores.claims.DiskClaims` and
:class:`~rerank_cache.stores.redis_claims.RedisClaims` (kept apart from both, so that
neither imports the other's backend).
"""

from __future__ import annotations

import math
import os
import uuid

__all__ = ["Claimer"]


class Claimer:
    """A lease in seconds and this process's owner name.

    Args:
        lease: seconds a claim lasts unless released; positive and finite.

    Raises:
        ValueError: the lease is not a positive, finite number of seconds.
    """

    def __init__(self, *, lease: float) -> None:
        if not lease > 0 or not math.isfinite(lease):
            raise ValueError("the claim lease must be positive")
        self._lease = lease
        self._pid = -1
        self._owner = ""

    @property
    def lease(self) -> float:
        """Seconds a claim lasts unless released."""
        return self._lease

    @property
    def owner(self) -> str:
        """This process's name on its claims: its pid and a random part, so that a forked
        child, with the same memory, still gets a name of its own."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._owner = pid, f"{pid}-{uuid.uuid4().hex}"
        return self._owner
