"""In-process single flight: concurrent requests for the same keys are fetched once.

Works across threads and asyncio tasks alike: a thread waits on a flight's event, a task
awaits it without blocking its event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

__all__ = ["Flight", "SingleFlight"]


class Flight:
    """One key being fetched by some thread or task; others wait for it to land.

    ``score`` is set as soon as the owner has it. If the owner failed, ``error`` holds why
    (waiters raise it rather than repeat a doomed fetch); if it was cancelled, both stay
    None and a waiter fetches the key itself. Flights are created for every
    miss, so they are kept cheap: the lock is the registry's, and an event or future is
    made only for a waiter, which is rare.
    """

    __slots__ = ("_event", "_lock", "_waiters", "error", "landed", "score")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._event: threading.Event | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.landed = False
        self.score: float | None = None
        self.error: Exception | None = None

    def land(self, score: float | None = None, error: Exception | None = None) -> None:
        """Record the outcome (once) and wake every waiting thread and task."""
        with self._lock:
            if self.landed:
                return
            self.landed, self.score, self.error = True, score, error
            event, waiters, self._waiters = self._event, self._waiters, []
        if event is not None:
            event.set()
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def join(self, timeout: float | None = None) -> bool:
        """Block the calling thread until the flight lands; False on timeout."""
        with self._lock:
            if self.landed:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    async def ajoin(self) -> None:
        """Wait, without blocking the event loop, until the flight lands."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.landed:
                return
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SingleFlight:
    """A registry of keys being fetched right now. Thread-safe and task-safe.

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

        While the caller owns a key, others asking for it get its flight and wait instead
        of fetching it again. Leaving the context releases the caller's keys and wakes
        their waiters: keys never published land with the error that ended the context,
        or, after a cancellation, with nothing (a waiter then fetches them itself).
        """
        mine: dict[str, Flight] = {}
        theirs: dict[str, Flight] = {}
        with self._lock:
            for key in keys:
                flight = self._flights.get(key)
                if flight is None:
                    mine[key] = self._flights[key] = Flight(self._lock)
                elif key not in mine:
                    theirs[key] = flight
        failure: Exception | None = None
        try:
            yield list(mine), theirs
        except Exception as exc:  # a failure (not a cancellation): waiters get it too
            failure = exc
            raise
        finally:
            with self._lock:
                for key, flight in mine.items():
                    if self._flights.get(key) is flight:
                        del self._flights[key]
            for flight in mine.values():
                flight.land(None, failure)

    def publish(self, scores: Mapping[str, float]) -> None:
        """Hand fresh scores to whoever waits on those keys."""
        with self._lock:
            landing = [(self._flights.get(key), value) for key, value in scores.items()]
        for flight, value in landing:
            if flight is not None:
                flight.land(value)

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)
