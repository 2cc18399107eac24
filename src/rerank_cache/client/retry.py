"""When to retry a DashScope request, how long to wait, and when to give up.

Both send loops of :class:`~rerank_cache.client.core.DashScopeClient` (sync and async) only do
the I/O: they ask :class:`Attempts` for each attempt's timeout and each wait, and sleep as
told. Whether a failure is worth retrying is decided where it is recognised
(:mod:`rerank_cache.client.responses`), which wraps it in :class:`RetryableError`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from ..errors import (
    APIError,
    ConfigurationError,
    DashScopeError,
    RateLimitError,
    RequestTimeoutError,
)

if TYPE_CHECKING:
    from ..ratelimit import RateLimiter

__all__ = [
    "Attempts",
    "RetryLog",
    "RetryPolicy",
    "RetryableError",
    "final_error",
    "overall_deadline",
    "parse_retry_after",
]

logger = logging.getLogger("rerank_cache")


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


class RetryableError(Exception):
    """Internal: an attempt failed in a way worth retrying.

    Attributes:
        error: what to raise if no attempt is left.
        retry_after: the server's ``Retry-After`` in seconds, if it sent one.
    """

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


def overall_deadline(policy: RetryPolicy) -> float | None:
    """Return when a call starting now must end, on ``policy.clock``; None for never."""
    if policy.deadline is None:
        return None
    return policy.clock() + policy.deadline


def final_error(retryable: RetryableError, attempts: int, out_of_time: bool) -> DashScopeError:
    """Return the error to raise when ``retryable`` will not be retried, saying why."""
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
        return APIError(message, status=error.status, code=error.code, request_id=error.request_id)
    return type(error)(message, request_id=error.request_id)


class RetryLog:
    """Says a retry once per failure kind and attempt within a window, per client.

    Requests in flight together fail together (a 429 burst): one warning line says it, not
    one per request.
    """

    #: Seconds within which the same (error type, code, attempt) is logged once.
    WINDOW = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[type, str | None, int], float] = {}

    def first(self, error: Exception, attempt: int, now: float) -> bool:
        """True if this failure is the first of its kind and attempt within the window."""
        kind = (type(error), getattr(error, "code", None), attempt)
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.WINDOW:
                return False
            self._last[kind] = now
            return True


class Attempts:
    """The attempts of one request: numbers them and decides every timeout and wait.

    Each method that refuses raises a :class:`~rerank_cache.errors.DashScopeError`, which
    ends the request.

    Args:
        policy: the retry policy (its clock, backoff and limits).
        timeout: seconds one attempt may wait for its response.
        deadline: when the whole call must end, from :func:`overall_deadline`.
        rng: the jitter source.
        log: the client's :class:`RetryLog`, so a burst of failures is logged once.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        timeout: float,
        deadline: float | None,
        rng: random.Random,
        log: RetryLog | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.deadline = deadline
        self.rng = rng
        self.log = log
        self.number = 0

    def start(self) -> float:
        """Begin the next attempt; return its timeout, or raise if the deadline has passed."""
        self.number += 1
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline - self.policy.clock()
        if remaining <= 0:
            raise RequestTimeoutError(
                f"DashScope did not answer within the deadline of "
                f"{self.policy.deadline:g} s (attempt {self.number}). Raise "
                "RetryPolicy.deadline or try again later."
            )
        return min(self.timeout, remaining)

    def rate_limit_wait(self, limiter: RateLimiter) -> float:
        """Take a ``max_rpm`` slot; return the wait before it, or raise if the wait would
        end past the overall deadline."""
        wait = limiter.reserve()
        if self.deadline is not None and wait > 0 and self.policy.clock() + wait > self.deadline:
            raise RequestTimeoutError(
                f"max_rpm={limiter.per_minute:g} would start this request "
                f"{wait:.1f} s from now, past the deadline of {self.policy.deadline:g} s. "
                "Raise max_rpm or RetryPolicy.deadline."
            )
        return max(wait, 0.0)

    def retry_wait(self, retryable: RetryableError) -> float:
        """Return how long to wait before the next attempt, or raise the final error."""
        wait_s = retryable.retry_after
        if wait_s is None:
            wait_s = self.policy.backoff(self.number, self.rng)
        out_of_time = self.deadline is not None and self.policy.clock() + wait_s > self.deadline
        if self.number >= self.policy.max_attempts or out_of_time:
            raise final_error(retryable, self.number, out_of_time) from None
        if self.log is None or self.log.first(retryable.error, self.number, self.policy.clock()):
            logger.warning(
                "rerank-cache: DashScope request failed (%s); "
                "retrying in %.2f s (attempt %d of %d)",
                retryable.error,
                wait_s,
                self.number + 1,
                self.policy.max_attempts,
            )
        return wait_s
