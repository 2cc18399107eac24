"""The DashScope client's pure pieces: the status and exception tables, and its twins."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import pytest
import requests
from dashscope.api_entities.dashscope_response import DashScopeAPIResponse

from rerank_cache import (
    APIError,
    AuthenticationError,
    DashScopeError,
    Doc,
    MalformedResponseError,
    QwenReRanker,
    RateLimiter,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
    TransportError,
)
from rerank_cache.client.responses import status_error, translate
from rerank_cache.client.retry import RetryableError
from rerank_cache.testing import DashScopeServer

from .conftest import SleepRecorder

KEY = "sk-secret-key-0000"


def _unwrap(outcome: Exception) -> tuple[Exception, bool]:
    if isinstance(outcome, RetryableError):
        return outcome.error, True
    return outcome, False


def _status(
    status: int, code: str = "", message: str = "no good", headers: dict[str, str] | None = None
) -> tuple[Exception, bool]:
    response = DashScopeAPIResponse(status, "req-1", code, message, headers=headers)
    return _unwrap(status_error(response, status, "req-1", model="gte-rerank-v2", api_key=KEY))


@pytest.mark.parametrize(
    ("status", "code", "kind", "retried", "hint"),
    [
        (429, "Throttling", RateLimitError, True, ""),
        (500, "InternalError", APIError, True, ""),
        (503, "", APIError, True, ""),
        (401, "InvalidApiKey", AuthenticationError, False, "Check the API key"),
        (403, "AccessDenied", AuthenticationError, False, "lacks access to this model"),
        (404, "ModelNotFound", APIError, False, "Check the model name 'gte-rerank-v2'"),
        (400, "DataInspectionFailed", APIError, False, "content inspection refused"),
        (402, "Arrearage", APIError, False, "account is overdue"),
        (400, "InvalidParameter", APIError, False, "rejected the request as invalid"),
        (409, "Conflict", APIError, False, ""),
    ],
)
def test_status_table_maps_each_row(
    status: int, code: str, kind: type[APIError], retried: bool, hint: str
) -> None:
    """Each error status (or code) raises its class with its hint; only 429 and 5xx retry."""
    error, retryable = _status(status, code)
    assert type(error) is kind
    assert retryable is retried
    assert isinstance(error, APIError)
    assert error.status == status
    assert error.code == (code or None)
    assert str(error).startswith(f"DashScope returned HTTP {status}{f' {code}' if code else ''}: ")
    assert hint in str(error)
    if not hint:
        assert str(error).endswith("(request id req-1).")


def test_status_rows_above_codes_win() -> None:
    """A status row listed before a code row takes precedence over the code."""
    error, _ = _status(404, "Arrearage")
    assert "Check the model name" in str(error)
    assert "overdue" not in str(error)
    error, retryable = _status(429, "DataInspectionFailed")
    assert isinstance(error, RateLimitError)
    assert retryable


def test_only_429_honours_retry_after() -> None:
    """Retry-After replaces the backoff after a 429, not after a 503."""
    outcome = status_error(
        DashScopeAPIResponse(429, headers={"retry-after": "2.5"}), 429, None, model="m", api_key=KEY
    )
    assert isinstance(outcome, RetryableError)
    assert outcome.retry_after == 2.5
    assert isinstance(outcome.error, RateLimitError)
    assert outcome.error.retry_after == 2.5
    outcome = status_error(
        DashScopeAPIResponse(503, headers={"Retry-After": "2.5"}), 503, None, model="m", api_key=KEY
    )
    assert isinstance(outcome, RetryableError)
    assert outcome.retry_after is None


def test_status_message_redacts_the_key() -> None:
    """An API key echoed in DashScope's message never reaches ours."""
    error, _ = _status(401, "InvalidApiKey", message=f"Invalid API-key provided: {KEY}")
    assert KEY not in str(error)
    assert "***" in str(error)


def _json_error() -> json.JSONDecodeError:
    return json.JSONDecodeError("Expecting value", "<html>", 0)


@pytest.mark.parametrize(
    ("make", "kind", "retried", "text"),
    [
        (requests.exceptions.ReadTimeout, RequestTimeoutError, True, "within 2.5 s"),
        (requests.exceptions.ConnectTimeout, RequestTimeoutError, True, "within 2.5 s"),
        (TimeoutError, RequestTimeoutError, True, "within 2.5 s"),
        (asyncio.TimeoutError, RequestTimeoutError, True, "within 2.5 s"),
        (aiohttp.ServerTimeoutError, RequestTimeoutError, True, "within 2.5 s"),
        (requests.exceptions.ConnectionError, TransportError, True, "reach DashScope at http://x/"),
        (aiohttp.ServerDisconnectedError, TransportError, True, "(ServerDisconnectedError)"),
        (aiohttp.ClientPayloadError, TransportError, True, "reach DashScope at http://x/"),
        (_json_error, MalformedResponseError, False, "not JSON"),
        (
            lambda: requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0),
            MalformedResponseError,
            False,
            "not JSON",
        ),
        (requests.exceptions.TooManyRedirects, TransportError, True, "HTTP error talking"),
        (aiohttp.ClientError, TransportError, True, "HTTP error talking"),
        (KeyError, MalformedResponseError, False, "not a rerank result (KeyError)"),
        (ValueError, MalformedResponseError, False, "not a rerank result (ValueError)"),
    ],
)
def test_exception_table_maps_each_row(
    make: Callable[[], Exception], kind: type[DashScopeError], retried: bool, text: str
) -> None:
    """What the SDK raises maps to our error by the first matching row (a ConnectTimeout
    is a timeout, a requests JSONDecodeError a bad body, not a transport error)."""
    error, retryable = _unwrap(translate(make(), timeout=2.5, base_url="http://x/"))
    assert type(error) is kind
    assert retryable is retried
    assert text in str(error)


def test_exception_table_maps_what_it_does_not_know_to_dashscope_error() -> None:
    """An exception no row matches becomes a plain DashScopeError (issue 13 item 5)."""
    error = translate(RuntimeError("boom"), timeout=1.0, base_url="http://x/")
    assert type(error) is DashScopeError


def test_rate_limit_refusal_counts_one_failure(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """A max_rpm wait refused for the deadline ends the request: one failure, not two."""
    r = make_reranker(max_rpm=RateLimiter(60), retry=RetryPolicy(sleep=sleeps, deadline=0.5))
    r.rerank([[Doc("a", fields={"content": "one"})]])
    with pytest.raises(RequestTimeoutError, match="max_rpm"):
        r.rerank([[Doc("b", fields={"content": "two"})]])
    assert r.usage.failures == 1
