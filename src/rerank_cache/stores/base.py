"""The scaffolding every score store shares: :class:`StoreBase`.

The part of a store that is not about its backend: the usage counters kept in memory and
flushed with the next write or by the process's background flush
(:mod:`rerank_cache.stores.flusher`), the flush of a store object collected without
``close()``, the memory tier in front of the backend, the context manager, and the
fail-open logging. A backend supplies the hooks (``_where``, ``_read_scores``,
``_read_stale_scores``, ``_read_entries``, ``_write_scores``, ``_write_counters_now``,
``_counter_writer``, ``_release`` and, when it has something to add, ``_failed``,
``_is_down``, ``_reachable``, ``_background_done``). What a store is (the protocols) is in
:mod:`rerank_cache.stores.protocols`.

Nothing concrete is imported here: no diskcache, no redis.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import timedelta
from typing import Any, Literal, TypeVar

from .counters import PendingCounters
from .flusher import (
    CounterWriter,
    ensure_running,
    orphaned,
    pending_elsewhere,
    track,
    untrack,
)
from .memory import MemoryTier
from .protocols import DEFAULT_TTL, TTL_UNSET, Purpose, finite_scores, ttl_seconds

__all__ = ["StoreBase"]

logger = logging.getLogger("rerank_cache")

_Store = TypeVar("_Store", bound="StoreBase")


class StoreBase:
    """Counters, flush, exit-time flush, context manager and fail-open logging of a store.

    A subclass calls ``super().__init__`` first, then :meth:`_opened` once it is usable,
    and implements the hooks below.
    """

    #: What counts as storage trouble (fail open) for this backend.
    _failures: tuple[type[BaseException], ...] = (OSError,)
    #: What else a write may fail with (a backend refusing a value), also failing open.
    _write_failures: tuple[type[BaseException], ...] = ()
    #: Whether a flush that does not wait (from the request path) warns when it fails.
    _warn_unwaited_flush = True

    def __init__(
        self,
        *,
        ttl: float | timedelta | None,
        stats_flush_interval: float,
        stale_ttl: float | timedelta | None = None,
        memory_entries: int = 0,
    ) -> None:
        self._ttl = ttl_seconds(DEFAULT_TTL if ttl is TTL_UNSET else ttl)
        self._stale_ttl = ttl_seconds(stale_ttl, name="stale_ttl")
        self._pending = PendingCounters(stats_flush_interval)
        self._closed = False
        # Held by a flush and by close(), so the flusher never writes through a closed store.
        self._flush_lock = threading.RLock()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if isinstance(memory_entries, bool) or not isinstance(memory_entries, int):
            raise ValueError(f"memory_entries must be an integer, got {memory_entries!r}")
        if memory_entries < 0:
            raise ValueError(f"memory_entries must be 0 (off) or more, got {memory_entries!r}")
        self._memory = MemoryTier(memory_entries) if memory_entries else None

    def _opened(self) -> None:
        """Register the store with the background flush, and flush its counters when the
        object is collected without close() (through the backend, not the store)."""
        self._finalizer = weakref.finalize(
            self, orphaned, self._where, self._pending, self._counter_writer()
        )
        self._finalizer.atexit = False  # the flusher writes them at exit
        track(self)

    @property
    def ttl(self) -> float | None:
        """Seconds a score stays valid, or None for no expiry."""
        return self._ttl

    @property
    def stale_ttl(self) -> float | None:
        """Seconds an expired score is kept for ``on_error="stale"``, or None (not kept)."""
        return self._stale_ttl

    @property
    def memory_entries(self) -> int:
        """How many scores the memory tier keeps (0: no memory tier)."""
        return 0 if self._memory is None else self._memory.limit

    # -- hooks ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        """Where the store is, for messages (never with a password)."""
        raise NotImplementedError

    def _read_scores(self, keys: list[str]) -> dict[str, float]:
        """Look up ``keys`` (at least one) in one batch; raise one of ``_failures`` if it fails."""
        raise NotImplementedError

    def _read_stale_scores(self, keys: list[str]) -> dict[str, float]:
        """Look up ``keys`` (at least one; ``stale_ttl`` is set), live or within the stale
        window, in one batch; raise one of ``_failures`` if it fails."""
        raise NotImplementedError

    def _read_entries(
        self, keys: list[str]
    ) -> tuple[Hashable, dict[str, tuple[float, float | None]]]:
        """The store's generation, then ``keys``' scores with their expiry time (or None).

        For the memory tier. ``keys`` may be empty (then only the generation is read). The
        generation is read *before* the scores, and changes whenever any process clears
        scores; it must cost about a ``stat``, not a query. Raise one of ``_failures`` if
        it fails.
        """
        raise NotImplementedError

    def _write_scores(
        self, scores: dict[str, float], model: str, counters: dict[str, Counter[str]]
    ) -> bool:
        """Store finite ``scores`` of ``model`` and add ``counters``, in one transaction.

        Add duplicate sends found on the way to ``counters`` (or, once written, to the
        pending counters). Raise one of ``_failures`` or ``_write_failures`` if nothing was
        written; return False if part of it failed (after logging it with
        :meth:`_store_error`).
        """
        raise NotImplementedError

    def _write_counters_now(self, pending: Mapping[str, Counter[str]], *, wait: bool) -> None:
        """Add ``pending`` to the stored counters; raise one of ``_failures`` if it fails.

        ``wait=False``: called from the request path, so give up rather than wait for a lock.
        """
        raise NotImplementedError

    def _release(self) -> None:
        """Release connections (counters are flushed already)."""
        raise NotImplementedError

    def _counter_writer(self) -> CounterWriter:
        """A function that adds pending counters to the stored ones, waiting at most a short
        timeout for a lock, and that refers to the backend's connection but not to the store
        (it outlives the store object, for :func:`weakref.finalize`)."""
        raise NotImplementedError

    def _background_done(self) -> None:
        """The background thread finished a flush: release what it holds of this store."""

    def _failed(self, exc: BaseException) -> str:
        """React to storage trouble; return a hint for the warning (may be empty)."""
        del exc
        return ""

    def _is_down(self) -> bool:
        """Whether the backend is known to be unreachable: then nothing is tried."""
        return False

    def _reachable(self) -> None:
        """Note that the backend just answered."""

    def _describe(self, exc: BaseException) -> str:
        """An exception for messages."""
        return f"{type(exc).__name__}: {exc}"

    # -- the request path ----------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Look up scores in one batch; missing, expired or unsafe entries are absent.

        Never raises for storage trouble: it is logged, counted, and reads as misses.
        """
        wanted = keys if isinstance(keys, list) else list(keys)
        if not wanted:
            return {}
        memory = self._memory
        if memory is None:
            return self._read_failing_open("read", lambda: self._read_scores(wanted))
        return self._read_failing_open("read", lambda: self._read_through(memory, wanted))

    def get_stale_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Look up scores live or expired less than ``stale_ttl`` ago, in one batch.

        What ``on_error="stale"`` serves when DashScope fails; never called on the normal
        path. Without a ``stale_ttl`` nothing is kept, so nothing is found. Never raises
        for storage trouble: it is logged, counted, and reads as nothing found.
        """
        wanted = list(keys)
        if not wanted or self._stale_ttl is None:
            return {}
        return self._read_failing_open("stale read", lambda: self._read_stale_scores(wanted))

    def _read_failing_open(
        self, what: str, read: Callable[[], dict[str, float]]
    ) -> dict[str, float]:
        """Run ``read`` unless the backend is down; storage trouble is logged, counted, and
        reads as nothing found."""
        if self._is_down():
            self._skip(what)
            return {}
        try:
            found = read()
        except self._failures as exc:
            self._store_error(what, exc)
            return {}
        self._reachable()
        return found

    def _read_through(self, memory: MemoryTier, wanted: list[str]) -> dict[str, float]:
        """Scores from memory, the rest from the store (kept in memory for next time).

        Memory is trusted only once the store's generation is confirmed unchanged: when a
        clear happened anywhere, what memory held is forgotten and read again.
        """
        found, missing = memory.lookup(wanted, time.time())
        generation, read = self._read_entries(missing)
        if memory.observe(generation) and found:
            found = {}
            generation, read = self._read_entries(wanted)
            memory.observe(generation)
        memory.store(read, generation)
        for key, (value, _) in read.items():
            found[key] = value
        return found

    def put_many(
        self,
        scores: Mapping[str, float],
        *,
        model: str,
        api_requests: int = 0,
        documents_sent: int = 0,
        tokens_billed: int = 0,
        purpose: Purpose = "app",
    ) -> bool:
        """Store scores (and usage) in one transaction; return False if it failed open.

        Usage counts in the totals whatever the ``purpose``; warming's is also counted
        apart (``warm_sent``, ``warm_tokens_billed``). Only finite floats are stored. Scores
        whose key is already live count as duplicate sends (another process fetched the same
        pair meanwhile). Counters pending in memory are written in the same transaction.
        """
        clean = finite_scores(scores)
        usage = Counter(
            api_requests=api_requests, documents_sent=documents_sent, tokens_billed=tokens_billed
        )
        if purpose == "warm":
            usage.update(warm_sent=documents_sent, warm_tokens_billed=tokens_billed)
        if self._is_down():
            self._skip("write")
            self._pending.add(model, usage)
            return False
        pending = self._pending.take()
        counters: dict[str, Counter[str]] = {m: Counter(c) for m, c in pending.items()}
        counters.setdefault(model, Counter()).update(usage)
        memory = self._memory
        # Taken before the write, so a clear meanwhile makes the memory tier skip these.
        generation = None if memory is None else memory.generation
        expires = None if self._ttl is None else time.time() + self._ttl
        try:
            written = self._write_scores(clean, model, counters)
        except (*self._failures, *self._write_failures) as exc:
            self._pending.restore(pending)
            self._pending.add(model, usage)  # the usage was paid for: keep counting it
            self._store_error("write", exc)
            return False
        self._reachable()
        if written and memory is not None:
            memory.store({key: (value, expires) for key, value in clean.items()}, generation)
        return written

    def _cleared(self) -> None:
        """Forget what the memory tier holds (a backend calls it after a clear, having
        changed its generation so that other processes forget theirs)."""
        if self._memory is not None:
            self._memory.forget()

    # -- counters ------------------------------------------------------------------------

    def record_lookup(
        self, model: str, *, hits: int, misses: int, purpose: Purpose = "app"
    ) -> None:
        """Count pairs looked up; a background thread writes them every
        ``stats_flush_interval`` seconds (this never writes).

        A warming lookup (one per input line) counts under ``warm_*``, not as hits or misses.
        """
        if purpose == "warm":
            looked_up = {"warm_lines": 1, "warm_looked_up": hits + misses, "warm_cached": hits}
            self._pending.add(model, looked_up)
        else:
            self._pending.add(model, {"hits": hits, "misses": misses})
        ensure_running()

    def record_fallback(self, model: str) -> None:
        """Count a rerank that fell back to retrieval order after an API failure."""
        self._pending.add(model, {"fallbacks": 1})

    def record_stale(self, model: str, served: int) -> None:
        """Count scores served past their ttl because DashScope failed (``stale_served``)."""
        self._pending.add(model, {"stale_served": served})

    def flush_stats(self) -> None:
        """Write the in-memory counters now (fails open: they are kept for a later flush).

        Tries even while the backend is considered down: it is called on purpose (and on
        close).
        """
        self._flush(wait=True)

    def _flush(self, *, wait: bool, background: bool = False) -> None:
        if background:
            if self._is_down() or not self._flush_lock.acquire(blocking=False):
                return  # a flush or close is under way in another thread
        else:
            self._flush_lock.acquire()
        try:
            self._flush_locked(wait=wait)
        finally:
            if background and not self._closed:
                self._background_done()
            self._flush_lock.release()

    def _pending_here(self) -> dict[str, Counter[str]]:
        """Counters not written yet of every store object of this process on this store."""
        merged: dict[str, Counter[str]] = {}
        for pending in [self._pending, *pending_elsewhere(self)]:
            for model, deltas in pending.snapshot().items():
                merged.setdefault(model, Counter()).update(deltas)
        return merged

    def _flush_locked(self, *, wait: bool) -> None:
        if self._closed or not self._pending:
            return
        pending = self._pending.take()
        try:
            self._write_counters_now(pending, wait=wait)
        except self._failures as exc:
            self._pending.restore(pending)
            self._failed(exc)
            if wait or self._warn_unwaited_flush:
                logger.warning(
                    "rerank-cache: could not write stats counters to %s (%s)",
                    self._where,
                    self._describe(exc),
                )
            return
        self._reachable()

    def _store_error(self, what: str, exc: BaseException) -> None:
        """Log and count a request-path operation that failed open."""
        hint = self._failed(exc)
        logger.warning(
            "rerank-cache: %s failed in %s (%s); continuing without the cache%s",
            what,
            self._where,
            self._describe(exc),
            hint,
        )
        self._pending.add("", {"store_errors": 1})

    def _skip(self, what: str) -> None:
        """Count an operation not tried because the backend is down."""
        logger.debug("rerank-cache: %s skipped: %s is down", what, self._where)
        self._pending.add("", {"store_errors": 1})

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush counters and release the store's connections."""
        with self._flush_lock:
            if self._closed:
                return
            self.flush_stats()
            self._closed = True
            if self._finalizer is not None:
                self._finalizer.detach()
            self._release()
            untrack(self)

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False
