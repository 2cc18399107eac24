"""What every score store is, and the scaffolding every store shares.

* :class:`ScoreStore`: what the caching layer needs on the request path; never raises for
  storage trouble. :class:`AdminStore` adds what the ``rerank-cache`` command needs.
* :class:`StoreBase`: the part of a store that is not about its backend: the usage counters
  kept in memory and flushed with the next write or by the process's background flush
  thread, the flush of a store object collected without ``close()`` and of every open store
  at interpreter exit, the context manager, and the fail-open logging. A backend supplies
  the hooks (``_where``, ``_write_counters_now``, ``_counter_writer``, ``_release`` and,
  when it has something to add, ``_failed``, ``_is_down``, ``_reachable``,
  ``_background_done``).
* The TTL argument both stores take (:data:`TTL_UNSET`, :func:`ttl_seconds`) and
  :func:`finite_scores`, the one rule of what is worth storing.

Nothing concrete is imported here: no diskcache, no redis.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from .counters import PendingCounters
from .memory import MemoryTier
from .stats import CacheStats, CheckReport

__all__ = [
    "DEFAULT_TTL",
    "REDIS_SCHEMES",
    "TTL_UNSET",
    "AdminStore",
    "CounterWriter",
    "Purpose",
    "ScoreStore",
    "StoreBase",
    "finite_scores",
    "flush_due",
    "ttl_seconds",
]

logger = logging.getLogger("rerank_cache")

#: Default time to live of a cached score: 30 days. Scores of a model version do not
#: change, but DashScope can update a model behind the same name; a month bounds the drift.
DEFAULT_TTL = timedelta(days=30)
#: The default of a store's ``ttl`` argument (``None`` means "never expire", so not None).
TTL_UNSET: Any = object()
#: URL schemes that name a Redis store: ``open`` picks the backend by them, and the Redis
#: store refuses other URLs. Here, and not in either, so neither imports the other.
REDIS_SCHEMES = ("redis", "rediss", "unix")

_Store = TypeVar("_Store", bound="StoreBase")

#: Who looked pairs up or stored scores: an application (``"app"``: ``rerank``, ``arerank``,
#: ``score_texts``) or a warming run (``"warm"``). Warming is counted apart, so hits, misses
#: and the savings they imply describe the applications only.
Purpose = Literal["app", "warm"]


def ttl_seconds(ttl: float | timedelta | None, *, name: str = "ttl") -> float | None:
    """Return a ``ttl`` argument as seconds (None: never expire).

    Raises:
        ValueError: not seconds, a ``timedelta`` or None; or not positive.

    Example:
        >>> ttl_seconds(timedelta(hours=1)), ttl_seconds(None)
        (3600.0, None)
    """
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"{name} must be seconds, a timedelta or None, not {ttl!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be positive, got {ttl!r}")
    return float(seconds)


def finite_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """The scores worth storing: finite numbers (not bools), as floats. Pure."""
    return {
        key: float(value)
        for key, value in scores.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


@runtime_checkable
class ScoreStore(Protocol):
    """A store of scores by key, as the caching layer uses it.

    :class:`~rerank_cache.ScoreCache` (diskcache) and
    :class:`~rerank_cache.stores.redis.RedisScoreCache` implement it (and
    :class:`AdminStore`). Implementations never raise for storage trouble on the request
    path (``get_many``, ``put_many``, ``record_*``): they fail open, log and count.
    """

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Batched lookup; absent keys are misses. Never raises for storage trouble."""

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
        """Store scores and usage in one transaction; False when it failed open."""

    def get_stale_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Scores of ``keys`` that are live or past their ttl by less than the store's
        ``stale_ttl`` (none without one). For ``on_error="stale"``; never raises."""

    def record_lookup(
        self, model: str, *, hits: int, misses: int, purpose: Purpose = "app"
    ) -> None:
        """Count pairs looked up (by an application, or by warming)."""

    def record_stale(self, model: str, served: int) -> None:
        """Count scores served stale because DashScope failed."""

    def record_fallback(self, model: str) -> None:
        """Count a rerank that fell back to retrieval order."""

    def stats(self) -> CacheStats:
        """Entries, hits, misses, usage and a per-model breakdown."""

    def close(self) -> None:
        """Flush counters and release connections (for whoever owns the store)."""


@runtime_checkable
class AdminStore(ScoreStore, Protocol):
    """A :class:`ScoreStore` that can be maintained: what the ``rerank-cache`` command uses."""

    def clear(self, model: str | None = None) -> int:
        """Delete every score, or one model's; return how many."""

    def expire(self, now: float | None = None, *, model: str | None = None) -> int:
        """Delete expired scores; return how many."""

    def count(self, *, model: str | None = None, expired: bool = False) -> int:
        """Count live (or expired) scores."""

    def check(self, *, fix: bool = False) -> CheckReport:
        """Check integrity; with ``fix``, repair what can be repaired."""

    def flush_stats(self) -> None:
        """Write counters kept in memory now (fails open)."""

    def iter_live(self, model: str | None = None) -> Iterator[tuple[str, float, float | None]]:
        """Every live score as ``(key, score, expires_at)``, in chunks (an export)."""

    def put_expiring(self, rows: Iterable[tuple[str, float, float | None]]) -> int:
        """Store rows each keeping its own expiry (an import); return how many."""

    def __enter__(self) -> AdminStore:
        """Use the store as a context manager; it closes on exit."""

    def __exit__(self, *exc_info: object) -> Any:
        """Close the store."""


#: Writes pending counters through a store's backend without holding the store itself.
CounterWriter = Callable[[Mapping[str, Counter[str]]], None]

_OPEN: weakref.WeakSet[StoreBase] = weakref.WeakSet()
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


def _orphaned(where: str, pending: PendingCounters, write: CounterWriter) -> None:
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
        _OPEN.add(self)
        self._finalizer = weakref.finalize(
            self, _orphaned, self._where, self._pending, self._counter_writer()
        )
        self._finalizer.atexit = False  # _flush_open_stores writes them at exit
        _FLUSHER.ensure()

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
        if self._is_down():
            self._skip("read")
            return {}
        try:
            if self._memory is None:
                found = self._read_scores(wanted)
            else:
                found = self._read_through(self._memory, wanted)
        except self._failures as exc:
            self._store_error("read", exc)
            return {}
        self._reachable()
        return found

    def get_stale_many(self, keys: Iterable[str]) -> dict[str, float]:
        """Look up scores live or expired less than ``stale_ttl`` ago, in one batch.

        What ``on_error="stale"`` serves when DashScope fails; never called on the normal
        path. Without a ``stale_ttl`` nothing is kept, so nothing is found. Never raises
        for storage trouble: it is logged, counted, and reads as nothing found.
        """
        wanted = list(keys)
        if not wanted or self._stale_ttl is None:
            return {}
        if self._is_down():
            self._skip("stale read")
            return {}
        try:
            found = self._read_stale_scores(wanted)
        except self._failures as exc:
            self._store_error("stale read", exc)
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
        _FLUSHER.ensure()

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
        where = self._where
        with _ORPHANS_LOCK:
            pendings = [p for w, p, _ in _ORPHANS if w == where]
        pendings += [s._pending for s in list(_OPEN) if s is not self and s._where == where]
        for pending in [self._pending, *pendings]:
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
            _OPEN.discard(self)

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False
