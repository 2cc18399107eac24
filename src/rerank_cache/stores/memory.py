"""The memory tier: a bounded, per-process map of recent scores in front of a store.

A rerank that finds all its scores here costs a dictionary lookup per candidate and one
check of the store's *generation* (a ``stat`` of a file for the disk store, one small
``GET`` sent with the batched read for Redis) instead of a query. The generation changes
whenever any process clears scores; a process that sees a new generation forgets everything
it holds, so a ``clear`` (of everything or of one model) anywhere is honoured everywhere on
the next call.

Each entry keeps the time its score expires in the store and is never served after it.
Entries read under one generation are never stored under another, so a read racing a clear
cannot bring cleared scores back. When full, the entries stored longest ago are dropped
first (insertion order: a lookup does not reorder, which keeps the hit path to one
``dict.get`` per key).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Iterable, Mapping
from operator import itemgetter

__all__ = ["DEFAULT_MEMORY_ENTRIES", "ENTRY_BYTES", "MemoryTier"]

#: Scores kept in memory per store object unless told otherwise. At about
#: :data:`ENTRY_BYTES` each, 50,000 entries take about 12.5 MB: the scores of the last 500
#: queries of 100 candidates, small beside a Python service, and enough for the repeat
#: traffic (the same queries within minutes) that makes a cache pay.
DEFAULT_MEMORY_ENTRIES = 50_000
#: Bytes one entry takes, measured with ``tracemalloc`` for a ``gte-rerank-v2`` key: the key
#: string (105), the (score, expiry) tuple and its two floats (104) and the dict slot (~40).
ENTRY_BYTES = 250

_NEVER = math.inf
_SCORE, _EXPIRY = itemgetter(0), itemgetter(1)


class MemoryTier:
    """Recently read or written scores, with their expiry, for one store object.

    Thread-safe: every method takes one lock for its whole batch.

    Args:
        entries: how many scores to keep (at least 1).

    Example:
        >>> tier = MemoryTier(2)
        >>> tier.store({"a": (0.5, None), "b": (0.25, 10.0)}, tier.generation)
        >>> tier.lookup(["a", "b", "c"], now=20.0)
        ({'a': 0.5}, ['b', 'c'])
    """

    __slots__ = ("_entries", "_generation", "_limit", "_lock")

    def __init__(self, entries: int) -> None:
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
            raise ValueError(f"memory entries must be a positive integer, got {entries!r}")
        self._limit = entries
        self._entries: dict[str, tuple[float, float]] = {}
        self._generation: Hashable = None
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """The most scores kept."""
        return self._limit

    @property
    def generation(self) -> Hashable:
        """The store generation the entries were read under."""
        return self._generation

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Iterable[str], now: float) -> tuple[dict[str, float], list[str]]:
        """Return the live scores held for ``keys`` and the keys not held (in order)."""
        found: dict[str, float] = {}
        missing: list[str] = []
        with self._lock:
            if not isinstance(keys, list):
                keys = list(keys)
            # Usually every key is held and live: four C-level passes, no Python per key.
            try:
                held = list(map(self._entries.__getitem__, keys))
            except KeyError:
                pass
            else:
                if not held or min(map(_EXPIRY, held)) > now:
                    return dict(zip(keys, map(_SCORE, held), strict=True)), missing
            get = self._entries.get
            for key in keys:
                entry = get(key)
                if entry is not None and entry[1] > now:
                    found[key] = entry[0]
                else:
                    missing.append(key)
        return found, missing

    def observe(self, generation: Hashable) -> bool:
        """Note the store's current generation; forget everything (True) if it changed."""
        with self._lock:
            if generation == self._generation:
                return False
            self._generation = generation
            self._entries.clear()
            return True

    def store(self, scores: Mapping[str, tuple[float, float | None]], generation: Hashable) -> None:
        """Keep ``scores`` (key -> (score, expiry time or None)) read under ``generation``.

        Ignored if the tier has seen another generation since: they may be cleared scores.
        """
        if not scores:
            return
        with self._lock:
            if generation != self._generation:
                return
            entries = self._entries
            for key, (value, expires) in scores.items():
                entries.pop(key, None)  # re-inserted at the end: the newest
                entries[key] = (value, _NEVER if expires is None else expires)
            excess = len(entries) - self._limit
            if excess > 0:
                for key in list(_first(entries, excess)):
                    del entries[key]

    def forget(self) -> None:
        """Drop every entry (this process cleared the store)."""
        with self._lock:
            self._entries.clear()


def _first(entries: dict[str, tuple[float, float]], n: int) -> Iterable[str]:
    for index, key in enumerate(entries):
        if index >= n:
            return
        yield key
