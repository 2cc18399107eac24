"""In-process single flight: concurrent requests for the same keys are fetched once."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Flight", "SingleFlight"]


@dataclass
class Flight:
    """One key being fetched by some thread: waiters wait on ``event``.

    ``score`` is set as soon as the owner has it; it stays None if the owner failed.
    """

    event: threading.Event = field(default_factory=threading.Event)
    score: float | None = None


class SingleFlight:
    """A registry of keys being fetched right now. Thread-safe.

    Example:
        >>> flights = SingleFlight()
        >>> with flights.claim(["k1"]) as (mine, theirs):
        ...     flights.publish({"k1": 0.5})
        ...     mine, theirs
        (['k1'], {})
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    @contextmanager
    def claim(self, keys: Iterable[str]) -> Iterator[tuple[list[str], dict[str, Flight]]]:
        """Claim keys; yields (keys now owned by the caller, flights owned by others).

        While the caller owns a key, other threads asking for it get its flight and wait
        instead of fetching it again. Leaving the context releases the caller's keys and
        wakes their waiters (with no score for keys never published).
        """
        mine: dict[str, Flight] = {}
        theirs: dict[str, Flight] = {}
        with self._lock:
            for key in keys:
                flight = self._flights.get(key)
                if flight is None:
                    mine[key] = self._flights[key] = Flight()
                elif key not in mine:
                    theirs[key] = flight
        try:
            yield list(mine), theirs
        finally:
            with self._lock:
                for key, flight in mine.items():
                    if self._flights.get(key) is flight:
                        del self._flights[key]
            for flight in mine.values():
                flight.event.set()

    def publish(self, scores: Mapping[str, float]) -> None:
        """Hand fresh scores to the threads waiting on those keys."""
        with self._lock:
            for key, value in scores.items():
                flight = self._flights.get(key)
                if flight is not None:
                    flight.score = value
                    flight.event.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)
