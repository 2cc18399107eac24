"""The DashScope client: sends planned requests through the real ``dashscope`` SDK.

This is the only module that performs rerank I/O. It passes the API key and base address on
every call (it never touches ``dashscope.api_key`` or other SDK globals), runs a rerank's
requests concurrently with a bounded number in flight, retries throttling, server errors and
dropped connections with exponential backoff and jitter (honouring ``Retry-After``) within an
overall deadline, validates every response before any score leaves this module, and records
token usage and request ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

from .errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    DashScopeError,
    MalformedResponseError,
    RateLimitError,
    RequestTimeoutError,
    TransportError,
)
from .planning import ModelLimits, iter_batches
from .ratelimit import RateLimiter

__all__ = [
    "BatchResult",
    "DashScopeClient",
    "RetryPolicy",
    "ScoreResult",
    "UsageTotals",
    "close_async_sessions",
]

logger = logging.getLogger("rerank_cache")

#: Requests in flight at once for one call: 2,000 documents (about 12 requests of
#: gte-rerank-v2) go out in one wave, well under its ~84 requests per second.
DEFAULT_MAX_CONCURRENCY = 16
#: Idle connections kept per client, at least (threads share a client through with_query).
_MIN_POOL_SIZE = 64
#: Above this many texts, the async path plans requests in a worker thread.
_PLAN_IN_THREAD = 200
#: Seconds within which the same retry warning (failure kind, attempt) is logged once.
_RETRY_LOG_WINDOW = 30.0


def _prepare_async_sdk() -> None:
    """Import the SDK's async client and build its shared TLS context (slow, once)."""
    from dashscope import AioTextReRank  # noqa: F401 - imported for its side effect
    from dashscope.api_entities.aio_session import get_ssl_context

    get_ssl_context()


#: DashScope's default (Beijing) endpoint, used when neither an argument nor
#: ``DASHSCOPE_HTTP_BASE_URL`` names another.
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"


@dataclass(frozen=True)
class RetryPolicy:
    """How requests are retried.

    429, 5xx, dropped connections and request timeouts are retried; other 4xx never are.
    The wait before attempt ``k + 1`` is ``min(backoff_max, backoff_base * 2^(k-1))`` with
    jitter (half fixed, half random), or the server's ``Retry-After`` when it sends one.

    Attributes:
        max_attempts: attempts per request, the first included (at least 1).
        backoff_base: the first backoff in seconds.
        backoff_max: the longest single backoff in seconds.
        deadline: seconds one rerank call may take in total, retries and waits included;
            None for no overall limit. A wait that would end past the deadline is not taken.
        sleep: how to wait (injectable so tests can record waits instead of sleeping).
        async_sleep: how the asyncio path waits (injectable likewise).
        clock: a monotonic clock in seconds (injectable for tests).
    """

    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    deadline: float | None = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, repr=False, compare=False
    )
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigurationError("RetryPolicy backoffs must not be negative")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigurationError("RetryPolicy.deadline must be positive or None")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Return the wait after failed attempt number ``attempt`` (1-based), with jitter."""
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return delay / 2 + rng.uniform(0, delay / 2)


@dataclass(frozen=True)
class BatchResult:
    """One successful DashScope request.

    Attributes:
        texts: the documents sent, in request order.
        scores: the relevance score of each text, in the same order.
        total_tokens: ``usage.total_tokens`` as billed.
        request_id: DashScope's request id.
        attempts: how many attempts the request took.
    """

    texts: tuple[str, ...]
    scores: tuple[float, ...]
    total_tokens: int
    request_id: str | None
    attempts: int


@dataclass(frozen=True)
class ScoreResult:
    """The outcome of scoring a set of texts against one query.

    Attributes:
        scores: relevance score per text.
        batches: the requests that produced them, in the order they completed.
    """

    scores: dict[str, float]
    batches: tuple[BatchResult, ...]

    @property
    def total_tokens(self) -> int:
        """Tokens billed across the requests."""
        return sum(b.total_tokens for b in self.batches)

    @property
    def request_ids(self) -> tuple[str, ...]:
        """DashScope request ids of the requests."""
        return tuple(b.request_id for b in self.batches if b.request_id)


@dataclass(frozen=True)
class UsageTotals:
    """Cumulative usage of one client (a snapshot).

    Attributes:
        requests: successful requests.
        documents: documents in successful requests.
        total_tokens: tokens billed.
        retries: attempts beyond the first, in requests that succeeded.
        failures: requests that ended in an error.
        fallbacks: reranks that returned retrieval order after a failure
            (``on_error="fallback"``).
    """

    requests: int = 0
    documents: int = 0
    total_tokens: int = 0
    retries: int = 0
    failures: int = 0
    fallbacks: int = 0


class _RetryableError(Exception):
    """Internal: an attempt failed in a way worth retrying."""

    def __init__(self, error: DashScopeError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: seconds (whole or decimal) or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    if not headers:
        return None
    lowered = name.lower()
    for key, value in headers.items():
        if str(key).lower() == lowered:
            return str(value)
    return None


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
        self.base_url = base_url
        self.limits = limits
        self.instruct = instruct
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self.rate_limiter = rate_limiter
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._totals = UsageTotals()
        self._retry_logged: dict[tuple[type, str | None, int], float] = {}  # see _retry_wait
        self._session: Any = None  # a requests.Session sized for max_concurrency, made lazily
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
        deadline = self._deadline()
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

    def _deadline(self) -> float | None:
        if self.retry.deadline is None:
            return None
        return self.retry.clock() + self.retry.deadline

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

    async def score_async(
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
        deadline = self._deadline()
        if not self._async_ready:
            # Importing the SDK and building its TLS context take tenths of a second:
            # do it once in a worker thread, not on the event loop.
            await asyncio.to_thread(_prepare_async_sdk)
            self._async_ready = True
        if len(texts) > _PLAN_IN_THREAD:  # token estimates for thousands of texts
            groups = await asyncio.to_thread(self._plan, query, texts)
        else:
            groups = self._plan(query, texts)
        results: list[BatchResult] = []
        semaphore = asyncio.Semaphore(self.max_concurrency)
        failed = False

        async def one(group: tuple[str, ...]) -> BatchResult | None:
            async with semaphore:
                if failed:  # another request failed: do not start new ones
                    return None
                return await self._send_async(query, group, deadline)

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
                    results.append(result)
                    if on_batch is not None:
                        await on_batch(result)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if error is not None:
            raise error
        return self._merge(results)

    def _send_concurrently(
        self,
        query: str,
        groups: Iterable[tuple[str, ...]],
        deadline: float | None,
        done: Callable[[BatchResult], None],
    ) -> None:
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="rerank-cache")
        pending: set[Future[BatchResult]] = set()
        error: BaseException | None = None
        try:
            # Each request is submitted as soon as it is planned: it is on the wire while
            # the following ones are still being estimated.
            for group in groups:
                pending.add(pool.submit(self._send, query, group, deadline))
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
        except BaseException:
            # Interrupted (Ctrl-C, a failing callback): start nothing new.
            for other in pending:
                other.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            # Requests that were in flight when we stopped were paid for: keep them.
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    try:
                        done(future.result())
                    except Exception:
                        logger.exception("rerank-cache: could not keep a completed request")
        if error is not None:
            raise error

    # -- one request, with retries ---------------------------------------------------------
    # The sync and async loops below differ only at the I/O edge (the SDK call, the sleep,
    # the rate limiter); every decision lives in the shared helpers after them.

    def _send(self, query: str, texts: tuple[str, ...], deadline: float | None) -> BatchResult:
        from dashscope import TextReRank  # imported when this client was built: a lookup

        attempt = 0
        while True:
            attempt += 1
            timeout = self._attempt_timeout(attempt, deadline)
            try:
                if self.rate_limiter is not None:
                    self.retry.sleep(self._rate_limit_wait(deadline))
                try:
                    response = TextReRank.call(
                        **self._call_kwargs(query, texts, timeout),
                        session=self._http_session(),
                    )
                except Exception as exc:
                    raise self._translate(exc, timeout) from exc
                result = self._check(response, texts, attempt)
            except _RetryableError as retryable:
                self.retry.sleep(self._retry_wait(retryable, attempt, deadline))
                continue
            except DashScopeError:
                self._count_failure()
                raise
            return self._succeeded(result)

    async def _send_async(
        self, query: str, texts: tuple[str, ...], deadline: float | None
    ) -> BatchResult:
        from dashscope import AioTextReRank

        attempt = 0
        while True:
            attempt += 1
            timeout = self._attempt_timeout(attempt, deadline)
            try:
                if self.rate_limiter is not None:
                    await self.retry.async_sleep(self._rate_limit_wait(deadline))
                try:
                    response = await AioTextReRank.call(**self._call_kwargs(query, texts, timeout))
                except Exception as exc:
                    raise self._translate(exc, timeout) from exc
                result = self._check(response, texts, attempt)
            except _RetryableError as retryable:
                await self.retry.async_sleep(self._retry_wait(retryable, attempt, deadline))
                continue
            except DashScopeError:
                self._count_failure()
                raise
            return self._succeeded(result)

    def _attempt_timeout(self, attempt: int, deadline: float | None) -> float:
        """Return this attempt's timeout; raise if the overall deadline has passed."""
        if deadline is None:
            return self.timeout
        remaining = deadline - self.retry.clock()
        if remaining <= 0:
            self._count_failure()
            raise RequestTimeoutError(
                f"DashScope did not answer within the deadline of "
                f"{self.retry.deadline:g} s (attempt {attempt}). Raise "
                "RetryPolicy.deadline or try again later."
            )
        return min(self.timeout, remaining)

    def _rate_limit_wait(self, deadline: float | None) -> float:
        """Take a ``max_rpm`` slot; return the wait before it, or raise if the wait would
        end past the overall deadline."""
        assert self.rate_limiter is not None
        wait = self.rate_limiter.reserve()
        if deadline is not None and wait > 0 and self.retry.clock() + wait > deadline:
            self._count_failure()
            raise RequestTimeoutError(
                f"max_rpm={self.rate_limiter.per_minute:g} would start this request "
                f"{wait:.1f} s from now, past the deadline of {self.retry.deadline:g} s. "
                "Raise max_rpm or RetryPolicy.deadline."
            )
        return max(wait, 0.0)

    def _retry_wait(
        self, retryable: _RetryableError, attempt: int, deadline: float | None
    ) -> float:
        """Return how long to wait before the next attempt, or raise the final error."""
        wait_s = retryable.retry_after
        if wait_s is None:
            wait_s = self.retry.backoff(attempt, self._rng)
        out_of_time = deadline is not None and self.retry.clock() + wait_s > deadline
        if attempt >= self.retry.max_attempts or out_of_time:
            self._count_failure()
            raise self._final(retryable, attempt, out_of_time) from None
        # Requests in flight together fail together (a 429 burst): one line per failure
        # kind and attempt within _RETRY_LOG_WINDOW says it, not one per request.
        error = retryable.error
        kind = (type(error), getattr(error, "code", None), attempt + 1)
        now = self.retry.clock()
        with self._lock:
            last = self._retry_logged.get(kind)
            first = last is None or now - last >= _RETRY_LOG_WINDOW
            if first:
                self._retry_logged[kind] = now
        if first:
            logger.warning(
                "rerank-cache: DashScope request failed (%s); "
                "retrying in %.2f s (attempt %d of %d)",
                error,
                wait_s,
                attempt + 1,
                self.retry.max_attempts,
            )
        return wait_s

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

    def _final(
        self, retryable: _RetryableError, attempts: int, out_of_time: bool
    ) -> DashScopeError:
        error = retryable.error
        plural = "attempt" if attempts == 1 else "attempts"
        why = "the overall deadline would pass" if out_of_time else f"{attempts} {plural}"
        message = f"{error} Gave up after {why}."
        if isinstance(error, RateLimitError):
            return RateLimitError(
                message + " Lower the request rate or ask for a higher quota.",
                status=error.status,
                code=error.code,
                request_id=error.request_id,
                retry_after=retryable.retry_after,
            )
        if isinstance(error, APIError):
            return APIError(
                message, status=error.status, code=error.code, request_id=error.request_id
            )
        return type(error)(message, request_id=error.request_id)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _http_session(self) -> Any:
        """This client's connection pool for the sync path, sized to ``max_concurrency``.

        The SDK's shared pool keeps 10 connections; more requests in flight would open a
        connection each time and throw it away (with a warning from urllib3). Closed when
        the client is collected.
        """
        with self._lock:
            if self._session is None:
                import requests
                from requests.adapters import HTTPAdapter

                session = requests.Session()
                # with_query copies share this client across threads: keep room for them.
                size = max(self.max_concurrency, _MIN_POOL_SIZE)
                adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                weakref.finalize(self, session.close)
                self._session = session
            return self._session

    def _call_kwargs(self, query: str, texts: tuple[str, ...], timeout: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "query": query,
            "documents": list(texts),
            "return_documents": False,
            "api_key": self._api_key,
            "base_address": self.base_url,
            "request_timeout": timeout,
        }
        if self.instruct is not None:
            kwargs["instruct"] = self.instruct
        return kwargs

    def _translate(self, exc: Exception, timeout: float) -> Exception:
        """Map what the SDK (requests or aiohttp underneath) raised to our errors."""
        import aiohttp
        import requests

        if isinstance(
            exc,
            (
                requests.exceptions.Timeout,
                TimeoutError,
                asyncio.TimeoutError,
                aiohttp.ServerTimeoutError,
            ),
        ):
            return _RetryableError(
                RequestTimeoutError(f"DashScope did not answer within {timeout:.3g} s.")
            )
        if isinstance(
            exc,
            (
                requests.exceptions.ConnectionError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
            ),
        ):
            return _RetryableError(
                TransportError(
                    f"Could not reach DashScope at {self.base_url} "
                    f"({type(exc).__name__}). Check the network and base_url."
                )
            )
        if isinstance(exc, (ValueError, aiohttp.ContentTypeError)) and (
            "json" in type(exc).__name__.lower() or isinstance(exc, aiohttp.ContentTypeError)
        ):
            return MalformedResponseError(
                "DashScope answered with a body that is not JSON; nothing was cached."
            )
        if isinstance(exc, (requests.exceptions.RequestException, aiohttp.ClientError)):
            return _RetryableError(
                TransportError(f"HTTP error talking to DashScope ({type(exc).__name__}).")
            )
        if isinstance(exc, (TypeError, KeyError, AttributeError, ValueError)):
            # The SDK builds its response objects from the body without checks: a 200
            # without `output`, or results without `index`, surface as these.
            return MalformedResponseError(
                "DashScope answered 200 with a body that is not a rerank result "
                f"({type(exc).__name__}); nothing was cached."
            )
        return exc

    def _check(self, response: Any, texts: tuple[str, ...], attempt: int) -> BatchResult:
        status = int(getattr(response, "status_code", 0) or 0)
        request_id = getattr(response, "request_id", None) or None
        if status != HTTPStatus.OK:
            raise self._status_error(response, status, request_id)
        output = getattr(response, "output", None)
        results = getattr(output, "results", None) if output is not None else None
        if not isinstance(results, list):
            raise MalformedResponseError(
                "DashScope answered 200 without output.results; nothing was cached.",
                request_id=request_id,
            )
        scores: list[float | None] = [None] * len(texts)
        for item in results:
            try:
                index = item["index"]
                score = item["relevance_score"]
            except (KeyError, TypeError):
                raise MalformedResponseError(
                    "DashScope returned a result without index or relevance_score; "
                    "nothing was cached.",
                    request_id=request_id,
                ) from None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(texts):
                raise MalformedResponseError(
                    f"DashScope returned result index {index!r} for a request of "
                    f"{len(texts)} documents; nothing was cached.",
                    request_id=request_id,
                )
            if (
                isinstance(score, bool)
                or not isinstance(score, (int, float))
                or not math.isfinite(score)
            ):
                raise MalformedResponseError(
                    f"DashScope returned relevance_score {score!r}, not a finite number; "
                    "nothing was cached.",
                    request_id=request_id,
                )
            if scores[index] is not None:
                raise MalformedResponseError(
                    f"DashScope returned index {index} twice; nothing was cached.",
                    request_id=request_id,
                )
            scores[index] = float(score)
        missing = sum(s is None for s in scores)
        if missing:
            raise MalformedResponseError(
                f"DashScope scored {len(texts) - missing} of {len(texts)} documents sent; "
                "nothing was cached.",
                request_id=request_id,
            )
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "total_tokens", None) if usage is not None else None
        total_tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0
        return BatchResult(
            texts=texts,
            scores=tuple(s for s in scores if s is not None),
            total_tokens=total_tokens,
            request_id=request_id,
            attempts=attempt,
        )

    def _status_error(self, response: Any, status: int, request_id: str | None) -> Exception:
        code = getattr(response, "code", None) or None
        raw = getattr(response, "message", None)
        detail = self._redact(str(raw)) if raw else "no message"
        what = f"DashScope returned HTTP {status}" + (f" {code}" if code else "")
        what += f": {detail}"
        if request_id:
            what += f" (request id {request_id})"
        what += "."
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            retry_after = parse_retry_after(
                _header(getattr(response, "headers", None), "Retry-After")
            )
            return _RetryableError(
                RateLimitError(what, code=code, request_id=request_id, retry_after=retry_after),
                retry_after,
            )
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            return _RetryableError(APIError(what, status=status, code=code, request_id=request_id))
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            hint = (
                " Check the API key (argument or DASHSCOPE_API_KEY) and that it belongs to the "
                "region of base_url: Beijing keys work only with dashscope.aliyuncs.com, "
                "international keys only with dashscope-intl.aliyuncs.com."
                if status == HTTPStatus.UNAUTHORIZED
                else " The key lacks access to this model, or its free quota is used up."
            )
            return AuthenticationError(what + hint, status=status, code=code, request_id=request_id)
        hint = ""
        if status == HTTPStatus.NOT_FOUND:
            hint = f" Check the model name {self.model!r} and base_url."
        elif code == "DataInspectionFailed":
            hint = " DashScope's content inspection refused the query or a document."
        elif code == "Arrearage":
            hint = " The Alibaba Cloud account is overdue; top it up to continue."
        elif status == HTTPStatus.BAD_REQUEST:
            hint = " DashScope rejected the request as invalid; it was not retried."
        return APIError(what + hint, status=status, code=code, request_id=request_id)


async def close_async_sessions() -> None:
    """Close the SDK's aiohttp session for the running event loop.

    ``dashscope.AioTextReRank`` keeps one pooled session per event loop for connection
    reuse. Await this before an event loop you created ends (for example at the end of an
    ``asyncio.run`` main or a test) so no connection outlives it.
    """
    from dashscope.api_entities.aio_session import close_shared_aio_session

    await close_shared_aio_session()
