"""The DashScope client: sends planned requests through the real ``dashscope`` SDK.

This is the only module that performs rerank I/O. It passes the API key and base address on
every call (it never touches ``dashscope.api_key`` or other SDK globals), runs a rerank's
requests concurrently with a bounded number in flight, retries throttling, server errors and
dropped connections with exponential backoff and jitter (honouring ``Retry-After``) within an
overall deadline, validates every response before any score leaves this module, and records
token usage and request ids.

What to retry and how long to wait is decided in :mod:`.retry`, what an answer or an
exception means in :mod:`.responses`; this module does the I/O around them. Its sync and
asyncio paths are twins named ``x`` and ``ax`` (``score``/``ascore``,
``_send``/``_asend``, ``_send_concurrently``/``_asend_concurrently``) that differ
only in how they wait and call the SDK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from ..errors import ConfigurationError, DashScopeError
from ..keys import scorer_id
from ..planning import ModelLimits, iter_batches
from ..ratelimit import RateLimiter
from ..urls import api_address, redact_url
from .responses import check, translate
from .results import BatchResult, ScoreResult, UsageTotals
from .retry import Attempts, RetryableError, RetryLog, RetryPolicy, overall_deadline
from .sdk import MIN_POOL_SIZE, pooled_session, prepare_async_sdk

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONCURRENCY",
    "DashScopeClient",
]

logger = logging.getLogger("rerank_cache")

#: Requests in flight at once for one call: 2,000 documents (about 12 requests of
#: gte-rerank-v2) go out in one wave, well under its ~84 requests per second.
DEFAULT_MAX_CONCURRENCY = 16
#: Above this many texts, the async path plans requests in a worker thread.
_PLAN_IN_THREAD = 200


#: DashScope's default (Beijing) endpoint, used when neither an argument nor
#: ``DASHSCOPE_HTTP_BASE_URL`` names another.
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"


class DashScopeClient:
    """Scores texts against a query with DashScope TextReRank. Thread-safe.

    Args:
        api_key: the DashScope API key (never logged or shown).
        model: the rerank model.
        base_url: the API base address, e.g. ``https://dashscope-intl.aliyuncs.com/api/v1``.
        limits: request limits for the model.
        instruct: the task instruction sent with every request (None for none).
        timeout: seconds to wait for one HTTP response.
        retry: the retry policy.
        max_concurrency: requests in flight at once for one call.
        rate_limiter: if given, every attempt first takes a slot from it.
    """

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str,
        limits: ModelLimits,
        instruct: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        self._api_key = api_key
        self.model = model
        self._base_url = api_address(base_url)  # what requests go to (no user info)
        #: The API base address as shown in messages, logs and reprs (credentials redacted).
        self.base_url = redact_url(base_url)
        #: Who scores this client's requests: part of every cache key (see keys.scorer_id).
        self.scorer_id = scorer_id(base_url)
        self.limits = limits
        self.instruct = instruct
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self.rate_limiter = rate_limiter
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._totals = UsageTotals()
        self._retry_log = RetryLog()
        self._session: Any = None  # a requests.Session sized for max_concurrency, made lazily
        self._pool: ThreadPoolExecutor | None = None  # the sync path's request threads, lazily
        self._finalizers: list[weakref.finalize[Any, Any]] = []  # closing the two above
        self._owner_pid = 0  # the process that made the session and the pool
        self._async_ready = False
        # The SDK takes a few tenths of a second to import: pay it when a reranker is built
        # (start-up), not on its first request. Modules that never build one (the CLI's
        # stats, clear, check) never import it.
        import dashscope  # noqa: F401

    def __repr__(self) -> str:
        return (
            f"DashScopeClient(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key='***', instruct={self.instruct!r})"
        )

    def close(self) -> None:
        """Stop this client's request threads and close its connections.

        Idempotent; waits for the requests the threads already hold. The client stays
        usable: a later call starts new threads and opens new connections. Calls running on
        other threads meanwhile finish: the requests they already handed over still run,
        and their further requests go to new threads.
        """
        with self._lock:
            pool, session = self._pool, self._session
            self._pool = self._session = None
            finalizers, self._finalizers = self._finalizers, []
        for finalizer in finalizers:  # done here: they must not keep what they close alive
            finalizer.detach()
        if pool is not None:
            # Not cancelled: another call may be waiting on a queued request of its own.
            pool.shutdown(wait=True)
        if session is not None:
            session.close()

    @property
    def usage(self) -> UsageTotals:
        """Cumulative usage of this client."""
        with self._lock:
            return self._totals

    # -- public scoring path -------------------------------------------------------------

    def score(
        self,
        query: str,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> ScoreResult:
        """Score every text against ``query``.

        The texts must be prepared (non-empty, trimmed; see :func:`planning.prepare_text`)
        and unique. They are split into requests within the model's limits and sent
        concurrently. ``on_batch`` is called in the calling thread once per successful
        request, as it completes, so a caller can persist partial progress.

        Raises:
            DashScopeError: a request failed after its retries. Requests that had already
                succeeded were still passed to ``on_batch``.
        """
        if not texts:
            return ScoreResult({}, ())
        deadline = overall_deadline(self.retry)
        groups = self._iter_plan(query, texts)
        first = next(groups)
        second = next(groups, None)
        results: list[BatchResult] = []

        def done(result: BatchResult) -> None:
            results.append(result)
            if on_batch is not None:
                on_batch(result)

        if second is None:
            done(self._send(query, first, deadline))
        else:
            self._send_concurrently(query, itertools.chain((first, second), groups), deadline, done)
        return self._merge(results)

    def _iter_plan(self, query: str, texts: Sequence[str]) -> Iterator[tuple[str, ...]]:
        for batch in iter_batches(query, texts, self.limits, instruct=self.instruct):
            yield tuple(texts[i] for i in batch)

    def _plan(self, query: str, texts: Sequence[str]) -> list[tuple[str, ...]]:
        return list(self._iter_plan(query, texts))

    @staticmethod
    def _merge(results: list[BatchResult]) -> ScoreResult:
        scores: dict[str, float] = {}
        for result in results:
            scores.update(zip(result.texts, result.scores, strict=True))
        return ScoreResult(scores, tuple(results))  # in completion order

    async def ascore(
        self,
        query: str,
        texts: Sequence[str],
        *,
        on_batch: Callable[[BatchResult], Awaitable[None]] | None = None,
    ) -> ScoreResult:
        """Score every text against ``query`` without blocking the event loop.

        The asyncio twin of :meth:`score` (same planning, limits, retries, errors and
        results), through ``dashscope.AioTextReRank``. ``on_batch`` is awaited once per
        successful request, as it completes. Cancelling the calling task cancels the
        requests in flight; completed requests were already passed to ``on_batch``.
        """
        if not texts:
            return ScoreResult({}, ())
        deadline = overall_deadline(self.retry)
        if not self._async_ready:
            # Importing the SDK and building its TLS context take tenths of a second:
            # do it once in a worker thread, not on the event loop.
            await asyncio.to_thread(prepare_async_sdk)
            self._async_ready = True
        if len(texts) > _PLAN_IN_THREAD:  # token estimates for thousands of texts
            groups = await asyncio.to_thread(self._plan, query, texts)
        else:
            groups = self._plan(query, texts)
        results: list[BatchResult] = []

        async def done(result: BatchResult) -> None:
            results.append(result)
            if on_batch is not None:
                await on_batch(result)

        await self._asend_concurrently(query, groups, deadline, done)
        return self._merge(results)

    def _send_concurrently(
        self,
        query: str,
        groups: Iterable[tuple[str, ...]],
        deadline: float | None,
        done: Callable[[BatchResult], None],
    ) -> None:
        pool = [self._executor()]  # a list: _submit replaces it if the client is closed
        pending: set[Future[BatchResult]] = set()
        error: BaseException | None = None
        todo = iter(groups)

        def fill() -> None:
            # At most max_concurrency of this call's requests in flight (the pool is shared
            # with other calls). Each is submitted as soon as it is planned: it is on the
            # wire while the following ones are still being estimated.
            while error is None and len(pending) < self.max_concurrency:
                group = next(todo, None)
                if group is None:
                    return
                pending.add(self._submit(pool, query, group, deadline))

        try:
            fill()
            while pending:
                # Hand each request to `done` as soon as it completes, so its scores are
                # stored even if a later request fails or the process dies.
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        continue
                    exc = future.exception()
                    if exc is None:
                        done(future.result())
                    elif error is None:
                        error = exc
                        # Stop what has not started; what is in flight finishes and is kept.
                        for other in pending:
                            other.cancel()
                fill()
        except BaseException:
            # Interrupted (Ctrl-C, a failing callback): start nothing new.
            for other in pending:
                other.cancel()
            raise
        finally:
            # Return only once nothing of this call runs any more (as a private pool's
            # shutdown would); requests that were in flight were paid for: keep them.
            wait(pending)
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    try:
                        done(future.result())
                    except Exception:
                        logger.exception("rerank-cache: could not keep a completed request")
        if error is not None:
            raise error

    async def _asend_concurrently(
        self,
        query: str,
        groups: Iterable[tuple[str, ...]],
        deadline: float | None,
        done: Callable[[BatchResult], Awaitable[None]],
    ) -> None:
        semaphore = asyncio.Semaphore(self.max_concurrency)
        failed = False

        async def one(group: tuple[str, ...]) -> BatchResult | None:
            async with semaphore:
                if failed:  # another request failed: do not start new ones
                    return None
                return await self._asend(query, group, deadline)

        tasks = [asyncio.ensure_future(one(group)) for group in groups]
        error: BaseException | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    result = await next_done
                except Exception as exc:  # noqa: BLE001 - the first is re-raised below
                    if error is None:
                        error, failed = exc, True
                    continue
                if result is not None:
                    await done(result)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if error is not None:
            raise error

    # -- one request, with retries ---------------------------------------------------------
    # The sync and async loops below differ only at the I/O edge (the SDK call, the sleep);
    # every decision is taken by Attempts (retry.py), check and translate (responses.py).
    # A DashScopeError that ends the request is counted once, where it leaves the loop.

    def _send(self, query: str, texts: tuple[str, ...], deadline: float | None) -> BatchResult:
        attempts = self._attempts(deadline)
        try:
            while True:
                timeout = attempts.start()
                try:
                    if self.rate_limiter is not None:
                        self.retry.sleep(attempts.rate_limit_wait(self.rate_limiter))
                    response = self._call(query, texts, timeout)
                    return self._succeeded(self._check(response, texts, attempts))
                except RetryableError as retryable:
                    self.retry.sleep(attempts.retry_wait(retryable))
        except DashScopeError:
            self._count_failure()
            raise

    async def _asend(
        self, query: str, texts: tuple[str, ...], deadline: float | None
    ) -> BatchResult:
        attempts = self._attempts(deadline)
        try:
            while True:
                timeout = attempts.start()
                try:
                    if self.rate_limiter is not None:
                        await self.retry.async_sleep(attempts.rate_limit_wait(self.rate_limiter))
                    response = await self._acall(query, texts, timeout)
                    return self._succeeded(self._check(response, texts, attempts))
                except RetryableError as retryable:
                    await self.retry.async_sleep(attempts.retry_wait(retryable))
        except DashScopeError:
            self._count_failure()
            raise

    def _call(self, query: str, texts: tuple[str, ...], timeout: float) -> Any:
        """One request through the SDK and this client's connection pool."""
        from dashscope import TextReRank  # imported when this client was built: a lookup

        try:
            return TextReRank.call(
                **self._call_kwargs(query, texts, timeout), session=self._http_session()
            )
        except Exception as exc:
            raise translate(exc, timeout=timeout, base_url=self.base_url) from exc

    async def _acall(self, query: str, texts: tuple[str, ...], timeout: float) -> Any:
        """One request through the SDK's asyncio client (its own shared session)."""
        from dashscope import AioTextReRank

        try:
            return await AioTextReRank.call(**self._call_kwargs(query, texts, timeout))
        except Exception as exc:
            raise translate(exc, timeout=timeout, base_url=self.base_url) from exc

    def _attempts(self, deadline: float | None) -> Attempts:
        return Attempts(
            self.retry, timeout=self.timeout, deadline=deadline, rng=self._rng, log=self._retry_log
        )

    def _check(self, response: Any, texts: tuple[str, ...], attempts: Attempts) -> BatchResult:
        return check(response, texts, attempts.number, model=self.model, api_key=self._api_key)

    def _succeeded(self, result: BatchResult) -> BatchResult:
        self._count(
            requests=1,
            documents=len(result.texts),
            total_tokens=result.total_tokens,
            retries=result.attempts - 1,
        )
        return result

    def _count(self, **deltas: int) -> None:
        with self._lock:
            t = self._totals
            self._totals = dataclasses.replace(
                t, **{name: getattr(t, name) + value for name, value in deltas.items()}
            )

    def _count_failure(self) -> None:
        self._count(failures=1)

    def count_fallback(self) -> None:
        """Count a rerank that fell back to retrieval order."""
        self._count(fallbacks=1)

    def _http_session(self) -> Any:
        """This client's connection pool for the sync path, closed when it is collected."""
        with self._lock:
            self._forget_parent()
            if self._session is None:
                self._session = pooled_session(self.max_concurrency)
                self._finalizers.append(weakref.finalize(self, self._session.close))
            return self._session

    def _submit(
        self,
        pool: list[ThreadPoolExecutor],
        query: str,
        group: tuple[str, ...],
        deadline: float | None,
    ) -> Future[BatchResult]:
        """Hand one request to ``pool[0]``; if :meth:`close` shut it down meanwhile, to the
        client's new threads (``pool[0]`` then names them for the rest of the call)."""
        try:
            return pool[0].submit(self._send, query, group, deadline)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            pool[0] = self._executor()
            return pool[0].submit(self._send, query, group, deadline)

    def _executor(self) -> ThreadPoolExecutor:
        """This client's request threads, kept across calls (starting threads per call
        cost a cold call tens of milliseconds) and stopped when it is collected.

        Shared by concurrent calls and :meth:`with_query` copies, so it holds as many
        threads as the connection pool holds connections; each call bounds its own
        requests in flight by ``max_concurrency``. Threads start only when none is idle.
        """
        with self._lock:
            self._forget_parent()
            if self._pool is None:
                size = max(self.max_concurrency, MIN_POOL_SIZE)
                self._pool = ThreadPoolExecutor(size, thread_name_prefix="rerank-cache")
                self._finalizers.append(weakref.finalize(self, self._pool.shutdown, wait=False))
            return self._pool

    def _forget_parent(self) -> None:
        """In a forked child, drop the parent's pool and connections (under ``_lock``).

        The child has none of the parent's threads, so work queued on its pool would never
        run, and its kept-alive sockets are the parent's too.
        """
        pid = os.getpid()
        if self._owner_pid != pid:
            self._pool = self._session = None
            self._owner_pid = pid

    def _call_kwargs(self, query: str, texts: tuple[str, ...], timeout: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "query": query,
            "documents": list(texts),
            "return_documents": False,
            "api_key": self._api_key,
            "base_address": self._base_url,
            "request_timeout": timeout,
        }
        if self.instruct is not None:
            kwargs["instruct"] = self.instruct
        return kwargs
