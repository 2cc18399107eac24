"""A client-side request rate limit (requests per minute), shared by threads."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .errors import ConfigurationError

__all__ = ["RateLimiter"]


class RateLimiter:
    """Spaces requests evenly so at most ``per_minute`` start in any minute. Thread-safe.

    Every attempt, retries included, takes a slot: DashScope counts them all.

    Args:
        per_minute: the most requests started per minute.
        clock: a monotonic clock in seconds (injectable for tests).
        sleep: how to wait (injectable for tests).

    Example:
        >>> waits = []
        >>> limiter = RateLimiter(120, clock=lambda: 0.0, sleep=waits.append)
        >>> for _ in range(3):
        ...     limiter.acquire()
        >>> waits
        [0.5, 1.0]
    """

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(per_minute, bool) or not math.isfinite(per_minute) or per_minute <= 0:
            raise ConfigurationError(f"per_minute must be a positive number, not {per_minute!r}")
        self.per_minute = per_minute
        self._interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None

    def reserve(self) -> float:
        """Take the next slot; return how many seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            slot = now if self._next is None else max(now, self._next)
            self._next = slot + self._interval
        return slot - now

    def acquire(self) -> None:
        """Wait (blocking the thread) until the next request may start."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)

    def __repr__(self) -> str:
        return f"RateLimiter(per_minute={self.per_minute:g})"
