"""The process's background flush of store counters, and the registry it walks.

Every open store registers here (:func:`track`); one daemon thread per process writes the
counters that are due (:func:`flush_due`). Counters of a store object collected without
``close()`` are handed over (:func:`orphaned`) and written by the thread, and every open
store is flushed at interpreter exit. A store reaches this module only through these
functions and the :class:`Flushable` shape, so nothing here imports a store.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from .counters import PendingCounters

__all__ = [
    "CounterWriter",
    "Flushable",
    "ensure_running",
    "flush_due",
    "orphaned",
    "pending_elsewhere",
    "track",
    "untrack",
]

logger = logging.getLogger("rerank_cache")


class Flushable(Protocol):
    """What the flusher needs of a store (:class:`~rerank_cache.stores.base.StoreBase`)."""

    _pending: PendingCounters

    @property
    def _where(self) -> str: ...

    def _flush(self, *, wait: bool, background: bool = False) -> None: ...

    def flush_stats(self) -> None:
        """Write the store's counters now (fails open)."""


#: Writes pending counters through a store's backend without holding the store itself.
CounterWriter = Callable[[Mapping[str, Counter[str]]], None]

_OPEN: weakref.WeakSet[Flushable] = weakref.WeakSet()
#: Counters of store objects collected without close(): (where, pending, writer).
_ORPHANS: list[tuple[str, PendingCounters, CounterWriter]] = []
_ORPHANS_LOCK = threading.Lock()


class _Flusher:
    """The process's background flush: one daemon thread for every open store.

    It wakes every ``stats_flush_interval`` (the shortest of the open stores, at most a
    second) and writes the counters that are due, never waiting for another process's lock
    (``wait=False``), so an idle or busy process shows its lookups to ``stats`` soon, and no
    write happens on the caller's thread. A forked child starts its own on first use.
    """

    def __init__(self) -> None:
        self.pid = -1
        self.wake = threading.Event()
        self.lock = threading.Lock()

    def ensure(self) -> None:
        """Start the thread in this process if it is not running."""
        if self.pid == os.getpid():
            return
        with self.lock:
            if self.pid == os.getpid():
                return
            self.wake = threading.Event()
            thread = threading.Thread(target=self._run, name="rerank-cache-stats", daemon=True)
            thread.start()
            self.pid = os.getpid()

    def _period(self) -> float:
        intervals = [store._pending.flush_interval for store in list(_OPEN)]
        return min([1.0, *intervals]) if intervals else 1.0

    def _run(self) -> None:  # pragma: no cover - exercised through its effects
        wake = self.wake
        while True:
            wake.wait(max(0.05, self._period()))
            wake.clear()
            try:
                flush_due()
            except Exception:  # the thread must outlive any one store's trouble
                logger.debug("rerank-cache: background flush failed", exc_info=True)


_FLUSHER = _Flusher()


def flush_due() -> None:
    """Write the counters of every store whose ``stats_flush_interval`` has passed, and those
    of store objects collected without being closed. Never waits for a lock."""
    _write_orphans(wait=False)
    for store in list(_OPEN):
        if store._pending.due():
            store._flush(wait=False, background=True)


def _write_orphans(*, wait: bool) -> None:
    with _ORPHANS_LOCK:
        orphans = list(_ORPHANS)
    for orphan in orphans:
        where, pending, write = orphan
        taken = pending.take()
        try:
            if taken:
                write(taken)
        except Exception as exc:  # noqa: BLE001 - any backend failure: keep them for later
            pending.restore(taken)
            if wait:
                logger.warning(
                    "rerank-cache: could not write stats counters to %s (%s)", where, exc
                )
            continue
        with _ORPHANS_LOCK:
            if orphan in _ORPHANS:
                _ORPHANS.remove(orphan)


def orphaned(where: str, pending: PendingCounters, write: CounterWriter) -> None:
    """A store object was collected without close(): its counters go to the flusher."""
    if not pending:
        return
    with _ORPHANS_LOCK:
        _ORPHANS.append((where, pending, write))
    _FLUSHER.wake.set()


@atexit.register
def _flush_open_stores() -> None:  # pragma: no cover - runs at interpreter exit
    for store in list(_OPEN):
        store.flush_stats()
    _write_orphans(wait=True)


def track(store: Flushable) -> None:
    """Register an open store with the background flush (and start it if needed)."""
    _OPEN.add(store)
    _FLUSHER.ensure()


def untrack(store: Flushable) -> None:
    """Forget a closed store."""
    _OPEN.discard(store)


def ensure_running() -> None:
    """Start the background flush in this process if it is not running (after a fork)."""
    _FLUSHER.ensure()


def pending_elsewhere(store: Flushable) -> list[PendingCounters]:
    """Counters not written yet of this process's other store objects on ``store``'s
    backend: open ones, and those collected without close()."""
    where = store._where
    with _ORPHANS_LOCK:
        pendings = [p for w, p, _ in _ORPHANS if w == where]
    return pendings + [s._pending for s in list(_OPEN) if s is not store and s._where == where]
