"""The DashScope client's pure pieces: the status and exception tables, and its twins."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

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
from rerank_cache.client.responses import check, status_error, translate
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


def _shaped(style: str, payload: dict[str, Any]) -> Any:
    """A 200 response built the way a test suite patching ``TextReRank.call`` builds it."""
    if style == "sdk":
        return DashScopeAPIResponse(status_code=200, request_id="r-1", **payload)
    if style == "dict":
        return {"status_code": 200, "request_id": "r-1", **payload}
    if style == "objects":  # zvec's tests: attribute access all the way down
        items = [SimpleNamespace(**item) for item in payload["output"]["results"]]
        return SimpleNamespace(
            status_code=200,
            request_id="r-1",
            output=SimpleNamespace(results=items),
            usage=SimpleNamespace(**payload["usage"]),
        )
    if style == "mock":  # a MagicMock whose output is a plain dict, usage never set
        response = MagicMock()
        response.status_code = 200
        response.output = payload["output"]
        return response
    raise AssertionError(style)


@pytest.mark.parametrize("style", ["sdk", "dict", "objects", "mock"])
def test_every_response_shape_the_sdk_types_allow_is_read(style: str) -> None:
    """Dicts, the SDK's dict-with-attributes objects, plain objects and mocks with dict
    output all give the same scores (suites that patch TextReRank.call keep working)."""
    payload = {
        "output": {
            "results": [
                {"index": 1, "relevance_score": 0.25},
                {"index": 0, "relevance_score": 0.75},
            ]
        },
        "usage": {"total_tokens": 12},
    }
    result = check(_shaped(style, payload), ("a", "b"), 1, model="m", api_key="sk-x")
    assert result.scores == (0.75, 0.25)
    assert result.total_tokens == (0 if style == "mock" else 12)
    assert result.request_id == (None if style == "mock" else "r-1")


def test_a_mock_without_scores_is_still_malformed() -> None:
    """A double whose results lack index or score is refused, not read as made-up numbers."""
    response = MagicMock()
    response.status_code = 200
    response.output = {"results": [MagicMock()]}
    with pytest.raises(MalformedResponseError, match="without index or relevance_score"):
        check(response, ("a",), 1, model="m", api_key="sk-x")
