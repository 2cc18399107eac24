"""Usage counters kept in memory between writes, shared by both score stores.

Hit and miss counts change on every lookup; writing them each time would turn the all-hits
path into a write. A store adds them here, and writes what is pending together with its next
write (or on a flush every ``flush_interval`` seconds, and on close). A write that fails puts
what it took back, so no count is lost while the store is unavailable.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping

__all__ = ["PendingCounters"]


class PendingCounters:
    """Per-model counters not yet written. Thread-safe.

    Example:
        >>> pending = PendingCounters(flush_interval=60)
        >>> pending.add("m", {"hits": 3})
        >>> pending.take()
        {'m': Counter({'hits': 3})}
        >>> bool(pending)
        False
    """

    def __init__(self, flush_interval: float) -> None:
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._pending: dict[str, Counter[str]] = {}
        self._last_take = time.monotonic()

    def add(self, model: str, deltas: Mapping[str, int]) -> None:
        """Count ``deltas`` for ``model`` (``""``: not tied to a model)."""
        with self._lock:
            counts = self._pending.get(model)
            if counts is None:
                counts = self._pending[model] = Counter()
            for name, delta in deltas.items():  # not Counter.update: a Python loop of its own
                counts[name] += delta

    def take(self) -> dict[str, Counter[str]]:
        """Return everything pending and start over (the caller writes it)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_take = time.monotonic()
        return pending

    def restore(self, pending: Mapping[str, Mapping[str, int]]) -> None:
        """Put back what a failed write took."""
        for model, deltas in pending.items():
            self.add(model, deltas)

    def snapshot(self) -> dict[str, Counter[str]]:
        """A copy of what is pending, for stats that include this process's counts."""
        with self._lock:
            return {model: Counter(deltas) for model, deltas in self._pending.items()}

    def due(self) -> bool:
        """Whether ``flush_interval`` has passed since the last write of counters."""
        return time.monotonic() - self._last_take >= self.flush_interval

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._pending)
