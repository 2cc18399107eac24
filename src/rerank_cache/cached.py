"""``CachedReRanker``: the caching layer. Only uncached pairs reach DashScope.

Per call: derive every pair's key (:mod:`rerank_cache.keys`), look them all up in one
batched read, send only the misses (deduplicated, and never twice at once within a process)
through the wrapped reranker's scoring path, store each completed request's scores in one
transaction as soon as it returns (a failure in request 3 of 4 keeps what requests 1-2
returned), and merge. A cached score is the very float DashScope returned.

With ``on_error="stale"``, a DashScope failure is answered from scores the store kept past
their ttl (its ``stale_ttl``) when every remaining miss has one (:meth:`_stale_or_raise`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .base import OnError, RerankMethods, Scorer, check_on_error
from .client.results import BatchResult, ScoreResult
from .errors import DashScopeError
from .keys import KeyBuilder
from .planning import Collected
from .singleflight import Flight, SingleFlight
from .stores.claims import DEFAULT_LEASE, Claims, claims_for, wait_for_claimed
from .stores.protocols import ScoreStore

__all__ = ["CachedReRanker"]

logger = logging.getLogger("rerank_cache")


class CachedReRanker(RerankMethods):
    """Wraps a reranker so each (model, instruct, query, document) score is fetched once.

    Same interface and properties as the reranker it wraps, so it works anywhere a
    :class:`QwenReRanker` does, zvec's ``Collection.query(reranker=...)`` included.

    Args:
        reranker: the reranker to wrap (a :class:`QwenReRanker` or another wrapper).
        cache: the score store, shared freely between rerankers, threads and processes.
        on_error: ``"raise"`` or ``"fallback"`` (see :class:`QwenReRanker`), or ``"stale"``:
            when DashScope fails after retries, the misses get the scores the store kept
            past their ttl (its ``stale_ttl``); if every miss has one the call succeeds
            (logged, counted as ``stale_served``), else the :class:`DashScopeError` is
            raised. By default the wrapped reranker's setting. Fallbacks and stale scores
            are counted in the cache's stats.
        claims: also never send a pair another process is sending (the disk, Redis and
            Redis Cluster stores have claims; any other store raises
            :class:`ConfigurationError`): misses are claimed in the store before they are
            sent, and pairs another process claimed are waited for. Off by default: it
            costs two short writes per call that misses (transactions on disk, round trips
            on Redis); worth it for expensive models (see ``docs/cache.md``). A
            :class:`~rerank_cache.stores.claims.Claims` object may be passed instead of True.
        claim_lease: seconds a claim lasts unless released (a crashed process's claims end
            then); about twice the request timeout. Default
            :data:`~rerank_cache.stores.claims.DEFAULT_LEASE`.

    Example:
        >>> from rerank_cache import QwenReRanker, ScoreCache
        >>> import tempfile
        >>> cache = ScoreCache(tempfile.mkdtemp() + "/scores")
        >>> reranker = CachedReRanker(
        ...     QwenReRanker("what is zvec", rerank_field="content", api_key="sk-..."), cache)
        >>> reranker.with_query("what is diskcache").query
        'what is diskcache'
        >>> cache.close()
    """

    def __init__(
        self,
        reranker: Scorer,
        cache: ScoreStore,
        *,
        on_error: OnError | None = None,
        claims: bool | Claims = False,
        claim_lease: float = DEFAULT_LEASE,
    ) -> None:
        self._reranker = reranker
        self._cache = cache
        self._on_error = check_on_error(
            getattr(reranker, "on_error", "raise") if on_error is None else on_error
        )
        self._flights = _flights_for(cache)
        self._keys: tuple[tuple[str, str | None, str, str], KeyBuilder] | None = None
        self._claims: Claims | None = (
            (claims_for(cache, lease=claim_lease) if claims else None)
            if isinstance(claims, bool)
            else claims
        )

    # -- the wrapped reranker's interface ------------------------------------------------

    @property
    def reranker(self) -> Scorer:
        """The wrapped reranker."""
        return self._reranker

    @property
    def cache(self) -> ScoreStore:
        """The score store."""
        return self._cache

    @property
    def query(self) -> str:
        """The query documents are scored against."""
        return self._reranker.query

    @property
    def topn(self) -> int:
        """How many documents :meth:`rerank` returns unless told otherwise."""
        return self._reranker.topn

    @property
    def rerank_field(self) -> str:
        """The document field whose text is scored."""
        return self._reranker.rerank_field

    @property
    def model(self) -> str:
        """The DashScope rerank model."""
        return self._reranker.model

    @property
    def instruct(self) -> str | None:
        """The task instruction, if any."""
        return self._reranker.instruct

    @property
    def scorer_id(self) -> str:
        """Who scores the wrapped reranker's requests (part of every key)."""
        return self._reranker.scorer_id

    @property
    def on_error(self) -> OnError:
        """What :meth:`rerank` does when DashScope fails: ``"raise"``, ``"fallback"`` or
        ``"stale"``."""
        return self._on_error

    def __getattr__(self, name: str) -> Any:
        # Anything else the wrapped reranker offers (usage, limits, base_url...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._reranker, name)

    def __repr__(self) -> str:
        return f"CachedReRanker({self._reranker!r}, {self._cache!r})"

    @property
    def claims(self) -> Claims | None:
        """The cross-process claims on in-flight pairs, or None (off)."""
        return self._claims

    def with_query(self, query: str) -> CachedReRanker:
        """Return a cheap copy for another query, sharing the cache, claims and client."""
        return CachedReRanker(
            self._reranker.with_query(query),
            self._cache,
            on_error=self._on_error,
            claims=self._claims or False,
        )

    def prepare(self, query_results: Any) -> Collected[Any]:
        """Deduplicate the documents and compute the exact texts to send (no I/O)."""
        return self._reranker.prepare(query_results)

    def _key_builder(self, model: str, instruct: str | None, query: str, scorer: str) -> KeyBuilder:
        """The key builder of this (model, instruct, query, scorer), kept between calls
        (a copy per query is the usual use, so it is built once)."""
        made = self._keys
        if made is None or made[0] != (model, instruct, query, scorer):
            made = self._keys = (
                (model, instruct, query, scorer),
                KeyBuilder(model, instruct, query, scorer=scorer),
            )
        return made[1]

    # -- scoring ---------------------------------------------------------------------------

    def score_texts(
        self,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> ScoreResult:
        """Score prepared unique texts, sending only the pairs the cache does not hold.

        ``batches`` in the result lists only the requests this call sent.
        """
        cache = self._cache
        reranker = self._reranker
        model = reranker.model
        keys = self._key_builder(model, reranker.instruct, reranker.query, reranker.scorer_id).keys(
            texts
        )
        found = cache.get_many(keys)
        scores, pending = _split(texts, keys, found)
        # Counted before fetching, so the fetch's write transaction publishes the counts.
        cache.record_lookup(model, hits=len(scores), misses=len(pending))
        sent: list[BatchResult] = []
        if pending:
            key_of = dict(zip(texts, keys, strict=True))
            try:
                self._fetch(pending, key_of, scores, sent, on_batch)
            except DashScopeError as exc:
                missing = self._still_missing(exc, pending, scores)
                stale = cache.get_stale_many(missing)
                self._stale_or_raise(exc, missing, stale, scores)
        return ScoreResult(scores, tuple(sent))

    async def ascore_texts(
        self,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], Awaitable[None]] | None = None,
    ) -> ScoreResult:
        """The asyncio twin of :meth:`score_texts`; store I/O runs in worker threads.

        Overlapping misses requested by concurrent tasks (or threads) are sent once. A
        cancelled task writes no partial entry: each request's scores are stored in one
        transaction or not at all, and tasks waiting on its keys fetch them themselves.
        """
        cache = self._cache
        reranker = self._reranker
        model = reranker.model
        keys = self._key_builder(model, reranker.instruct, reranker.query, reranker.scorer_id).keys(
            texts
        )
        found = await asyncio.to_thread(cache.get_many, keys)
        scores, pending = _split(texts, keys, found)
        cache.record_lookup(model, hits=len(scores), misses=len(pending))  # memory only
        sent: list[BatchResult] = []
        if pending:
            key_of = dict(zip(texts, keys, strict=True))
            try:
                await self._afetch(pending, key_of, scores, sent, on_batch)
            except DashScopeError as exc:
                missing = self._still_missing(exc, pending, scores)
                stale = await asyncio.to_thread(cache.get_stale_many, missing)
                self._stale_or_raise(exc, missing, stale, scores)
        return ScoreResult(scores, tuple(sent))

    async def _afetch(
        self,
        pending: dict[str, str],
        key_of: dict[str, str],
        scores: dict[str, float],
        sent: list[BatchResult],
        on_batch: Callable[[BatchResult], Awaitable[None]] | None,
    ) -> None:
        """The asyncio twin of :meth:`_fetch`."""
        cache, flights, claims = self._cache, self._flights, self._claims

        async def stored(batch: BatchResult) -> None:
            fresh = self._fresh(batch, key_of)
            await asyncio.to_thread(self._store, batch, fresh)
            self._landed(batch, fresh, scores, sent)
            if on_batch is not None:
                await on_batch(batch)

        while pending:
            with flights.claim(list(pending)) as (mine, theirs):
                if mine:
                    ours, elsewhere = (
                        (mine, [])
                        if claims is None
                        else await asyncio.to_thread(_claim, claims, mine)
                    )
                    try:
                        late = await asyncio.to_thread(cache.get_many, ours)
                        self._take_late(late, pending, scores)
                        to_send = [pending[key] for key in ours if key not in late]
                        if to_send:
                            result = await self._reranker.ascore_texts(to_send, on_batch=stored)
                            unsent = self._unsent(result, scores)
                            if unsent:
                                await asyncio.to_thread(self._keep, unsent, key_of, scores)
                        for key in ours:
                            pending.pop(key, None)
                    finally:
                        if claims is not None and ours:
                            await asyncio.to_thread(claims.release, ours)
                    if claims is not None and elsewhere:
                        landed = await asyncio.to_thread(wait_for_claimed, cache, claims, elsewhere)
                        self._publish_landed(landed, pending, scores)
            for key, flight in theirs.items():
                await flight.ajoin()
                self._take_landed(key, flight, pending, scores)

    def _fetch(
        self,
        pending: dict[str, str],
        key_of: dict[str, str],
        scores: dict[str, float],
        sent: list[BatchResult],
        on_batch: Callable[[BatchResult], None] | None,
    ) -> None:
        """Fill ``scores`` for ``pending`` (key -> text), sending each miss once."""
        cache, flights, claims = self._cache, self._flights, self._claims

        def stored(batch: BatchResult) -> None:
            fresh = self._fresh(batch, key_of)
            self._store(batch, fresh)
            self._landed(batch, fresh, scores, sent)
            if on_batch is not None:
                on_batch(batch)

        while pending:
            with flights.claim(list(pending)) as (mine, theirs):
                if mine:
                    # With claims, send only what no other process is sending.
                    ours, elsewhere = (mine, []) if claims is None else _claim(claims, mine)
                    try:
                        # Another thread or process may have stored some since our first read.
                        late = cache.get_many(ours)
                        self._take_late(late, pending, scores)
                        to_send = [pending[key] for key in ours if key not in late]
                        if to_send:
                            result = self._reranker.score_texts(to_send, on_batch=stored)
                            unsent = self._unsent(result, scores)
                            if unsent:
                                self._keep(unsent, key_of, scores)
                        for key in ours:
                            pending.pop(key, None)
                    finally:
                        if claims is not None and ours:
                            claims.release(ours)
                    if claims is not None and elsewhere:
                        # Local threads wait on this flight meanwhile; keys whose claimer
                        # gave up stay pending, to be claimed next round.
                        landed = wait_for_claimed(cache, claims, elsewhere)
                        self._publish_landed(landed, pending, scores)
            for key, flight in theirs.items():
                flight.join()
                self._take_landed(key, flight, pending, scores)
            # Keys whose owner was cancelled stay pending: this thread claims them next round.

    # -- shared by the sync and async paths ----------------------------------------------

    @staticmethod
    def _fresh(batch: BatchResult, key_of: dict[str, str]) -> dict[str, float]:
        return {key_of[t]: s for t, s in zip(batch.texts, batch.scores, strict=True)}

    def _store(self, batch: BatchResult, fresh: dict[str, float]) -> None:
        self._cache.put_many(
            fresh,
            model=self._reranker.model,
            api_requests=1,
            documents_sent=len(batch.texts),
            tokens_billed=batch.total_tokens,
        )

    def _landed(
        self,
        batch: BatchResult,
        fresh: dict[str, float],
        scores: dict[str, float],
        sent: list[BatchResult],
    ) -> None:
        self._flights.publish(fresh)
        scores.update(zip(batch.texts, batch.scores, strict=True))
        sent.append(batch)

    @staticmethod
    def _take_landed(
        key: str, flight: Flight, pending: dict[str, str], scores: dict[str, float]
    ) -> None:
        """Take a score another thread or task fetched; raise the error that stopped it."""
        if flight.score is not None:
            scores[pending.pop(key)] = flight.score
        elif isinstance(flight.error, DashScopeError):
            # The same pairs would fail the same way: do not queue behind a doomed retry.
            raise copy.copy(flight.error)

    @staticmethod
    def _unsent(result: ScoreResult, scores: dict[str, float]) -> dict[str, float]:
        """Scores the wrapped reranker returned without a request (e.g. from its own cache,
        when caching layers are stacked): text -> score."""
        return {t: s for t, s in result.scores.items() if t not in scores}

    def _keep(
        self, unsent: dict[str, float], key_of: dict[str, str], scores: dict[str, float]
    ) -> None:
        """Store and hand out scores that came without a request (no usage to count)."""
        fresh = {key_of[t]: s for t, s in unsent.items()}
        self._cache.put_many(fresh, model=self._reranker.model)
        self._flights.publish(fresh)
        scores.update(unsent)

    def _publish_landed(
        self, landed: dict[str, float], pending: dict[str, str], scores: dict[str, float]
    ) -> None:
        """Take scores another process fetched, and hand them to this process's waiters."""
        self._flights.publish(landed)
        self._take_late(landed, pending, scores)

    @staticmethod
    def _take_late(
        late: dict[str, float], pending: dict[str, str], scores: dict[str, float]
    ) -> None:
        for key, value in late.items():
            scores[pending.pop(key)] = value

    def _still_missing(
        self, exc: DashScopeError, pending: dict[str, str], scores: dict[str, float]
    ) -> dict[str, str]:
        """The misses (key -> text) a failed fetch left without a score; re-raise ``exc``
        unless ``on_error="stale"``. Scores of requests that succeeded are kept."""
        if self._on_error != "stale":
            raise exc
        return {key: text for key, text in pending.items() if text not in scores}

    def _stale_or_raise(
        self,
        exc: DashScopeError,
        missing: dict[str, str],
        stale: dict[str, float],
        scores: dict[str, float],
    ) -> None:
        """Serve every miss its kept score, logged once and counted; or raise ``exc`` when
        one has none (a partial answer would rank documents against missing scores)."""
        if any(key not in stale for key in missing):
            raise exc
        if not missing:
            return  # every score arrived (another caller's fetch failed, not ours)
        for key, text in missing.items():
            scores[text] = stale[key]
        logger.warning(
            "rerank-cache: DashScope failed (%s); served %d score(s) past their ttl "
            "(on_error='stale')",
            exc,
            len(missing),
        )
        self._cache.record_stale(self.model, len(missing))

    def _count_fallback(self) -> None:
        self._cache.record_fallback(self.model)

    def close(self) -> None:
        """Close the cache (flushing its counters). For a cache made by ``.cached()``."""
        self._cache.close()

    def __enter__(self) -> CachedReRanker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: One single flight per store object, shared by every CachedReRanker on it (a service
#: typically builds one reranker per query), and gone with the store. In-process state of the
#: caching layer, so it lives here and not in the store.
_FLIGHTS: weakref.WeakKeyDictionary[ScoreStore, SingleFlight] = weakref.WeakKeyDictionary()
_FLIGHTS_LOCK = threading.Lock()


def _flights_for(cache: ScoreStore) -> SingleFlight:
    with _FLIGHTS_LOCK:
        try:
            flights = _FLIGHTS.get(cache)
            if flights is None:
                flights = _FLIGHTS[cache] = SingleFlight()
        except TypeError:  # a store that cannot be weakly referenced: this reranker's own
            flights = SingleFlight()
        return flights


def _claim(claims: Claims, keys: list[str]) -> tuple[list[str], list[str]]:
    """Claim ``keys``: those to send (in order) and those another process is sending."""
    held = claims.claim(keys)
    return [key for key in keys if key in held], [key for key in keys if key not in held]


def _split(
    texts: Sequence[str], keys: list[str], found: dict[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Split texts into cached scores (text -> score) and misses (key -> text). Pure."""
    if len(found) == len(keys):
        # Usually all hits: built by C-level passes, no Python per text.
        try:
            return dict(zip(texts, map(found.__getitem__, keys), strict=True)), {}
        except KeyError:  # a store that returned other keys than asked: the careful walk
            pass
    scores: dict[str, float] = {}
    pending: dict[str, str] = {}
    get = found.get
    for text, key in zip(texts, keys, strict=True):
        value = get(key)
        if value is None:
            pending[key] = text
        else:
            scores[text] = value
    return scores, pending
