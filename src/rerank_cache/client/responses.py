"""What a DashScope answer means: a validated result, or which of our errors to raise.

- :func:`check` validates a response before any score leaves the client: every document
  scored exactly once with a finite number, or :class:`~rerank_cache.errors.MalformedResponseError`.
- :data:`STATUS_TABLE` maps an error status (or DashScope error code) to our error, its hint
  and whether it is retried; :func:`status_error` applies it.
- :func:`exception_table` maps what the SDK raised (``requests`` underneath the sync path,
  ``aiohttp`` underneath the async one) likewise; :func:`translate` applies it.

The classes in the exception table are the real ones, imported on first use: the SDK has
imported ``requests`` and ``aiohttp`` by then, so it costs a lookup.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import json
import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from ..errors import (
    APIError,
    AuthenticationError,
    DashScopeError,
    MalformedResponseError,
    RateLimitError,
    RequestTimeoutError,
    TransportError,
)
from .results import BatchResult
from .retry import RetryableError, parse_retry_after

__all__ = [
    "STATUS_TABLE",
    "SUPPORTED_DASHSCOPE",
    "ExceptionRow",
    "StatusRow",
    "check",
    "exception_table",
    "status_error",
    "translate",
]


@dataclass(frozen=True)
class StatusRow:
    """One row of :data:`STATUS_TABLE`.

    Attributes:
        error: the error raised; a :class:`~rerank_cache.errors.RateLimitError` also
            carries the server's ``Retry-After``, which then replaces the backoff.
        retryable: whether the request is tried again (within the retry policy).
        statuses: the HTTP statuses this row matches.
        code: the DashScope error code this row matches, whatever the status.
        hint: appended to the message: what to do; ``{model}`` is the model name.
    """

    error: type[APIError]
    retryable: bool = False
    statuses: Container[int] = ()
    code: str | None = None
    hint: str = ""

    def matches(self, status: int, code: str | None) -> bool:
        """Whether an answer with ``status`` and ``code`` falls under this row."""
        return status in self.statuses or (self.code is not None and code == self.code)


#: HTTP statuses have three digits: these are all the server errors.
_SERVER_ERRORS = range(HTTPStatus.INTERNAL_SERVER_ERROR, 1000)

#: What a non-200 answer raises. The first row that matches wins, so a status row above a
#: code row takes precedence over the code; a status no row matches is a plain APIError.
STATUS_TABLE: tuple[StatusRow, ...] = (
    StatusRow(RateLimitError, retryable=True, statuses=(HTTPStatus.TOO_MANY_REQUESTS,)),
    StatusRow(APIError, retryable=True, statuses=_SERVER_ERRORS),
    StatusRow(
        AuthenticationError,
        statuses=(HTTPStatus.UNAUTHORIZED,),
        hint=" Check the API key (argument or DASHSCOPE_API_KEY) and that it belongs to the "
        "region of base_url: Beijing keys work only with dashscope.aliyuncs.com, "
        "international keys only with dashscope-intl.aliyuncs.com.",
    ),
    StatusRow(
        AuthenticationError,
        statuses=(HTTPStatus.FORBIDDEN,),
        hint=" The key lacks access to this model, or its free quota is used up.",
    ),
    StatusRow(
        APIError,
        statuses=(HTTPStatus.NOT_FOUND,),
        hint=" Check the model name {model!r} and base_url.",
    ),
    StatusRow(
        APIError,
        code="DataInspectionFailed",
        hint=" DashScope's content inspection refused the query or a document.",
    ),
    StatusRow(
        APIError,
        code="Arrearage",
        hint=" The Alibaba Cloud account is overdue; top it up to continue.",
    ),
    StatusRow(
        APIError,
        statuses=(HTTPStatus.BAD_REQUEST,),
        hint=" DashScope rejected the request as invalid; it was not retried.",
    ),
)
_OTHER_STATUS = StatusRow(APIError)


@dataclass(frozen=True)
class ExceptionRow:
    """One row of :func:`exception_table`.

    Attributes:
        types: the exception classes this row matches (instances of subclasses too).
        error: the error raised instead.
        retryable: whether the request is tried again (within the retry policy).
        message: the error's message; ``{timeout}``, ``{base_url}`` and ``{name}`` (the
            class name of what was raised) are filled in.
    """

    types: tuple[type[BaseException], ...]
    error: type[DashScopeError]
    retryable: bool
    message: str


@functools.cache
def exception_table() -> tuple[ExceptionRow, ...]:
    """What an exception from the SDK call raises. The first row that matches wins (a
    requests ``ConnectTimeout`` is a timeout, a requests ``JSONDecodeError`` a bad body);
    :func:`translate` maps an exception no row matches to a plain ``DashScopeError``."""
    import aiohttp
    import requests

    return (
        ExceptionRow(
            (
                requests.exceptions.Timeout,
                TimeoutError,
                asyncio.TimeoutError,
                aiohttp.ServerTimeoutError,
            ),
            RequestTimeoutError,
            retryable=True,
            message="DashScope did not answer within {timeout:.3g} s.",
        ),
        ExceptionRow(
            (
                requests.exceptions.ConnectionError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
            ),
            TransportError,
            retryable=True,
            message="Could not reach DashScope at {base_url} ({name}). "
            "Check the network and base_url.",
        ),
        ExceptionRow(
            (json.JSONDecodeError, requests.exceptions.JSONDecodeError, aiohttp.ContentTypeError),
            MalformedResponseError,
            retryable=False,
            message="DashScope answered with a body that is not JSON; nothing was cached.",
        ),
        ExceptionRow(
            (requests.exceptions.RequestException, aiohttp.ClientError),
            TransportError,
            retryable=True,
            message="HTTP error talking to DashScope ({name}).",
        ),
        # The SDK builds its response objects from the body without checks: a 200
        # without `output`, or results without `index`, surface as these.
        ExceptionRow(
            (TypeError, KeyError, AttributeError, ValueError),
            MalformedResponseError,
            retryable=False,
            message="DashScope answered 200 with a body that is not a rerank result "
            "({name}); nothing was cached.",
        ),
    )


#: The dashscope releases this package supports, as pyproject.toml declares them.
SUPPORTED_DASHSCOPE = ">=2.0.2,<3"

#: How Python words a call that does not fit the function's signature.
_SIGNATURE_MISMATCH = re.compile(
    r"unexpected keyword argument|missing \d+ required|positional arguments? but|"
    r"got multiple values for|positional-only"
)


def _is_signature_mismatch(exc: Exception) -> bool:
    """Whether ``exc`` says a call did not fit a signature (the SDK changed under us).

    The SDK builds its response objects with ``Result(**item)`` from the body, so a body
    lacking a field (or with an unknown one) fails the same way in an ``__init__``: that
    is a bad body, not a changed SDK.
    """
    text = str(exc)
    return (
        isinstance(exc, TypeError)
        and _SIGNATURE_MISMATCH.search(text) is not None
        and "__init__()" not in text
        and "__new__()" not in text
    )


def _installed_dashscope() -> str:
    try:
        return importlib.metadata.version("dashscope")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def translate(exc: Exception, *, timeout: float, base_url: str) -> Exception:
    """Return what to raise for ``exc``, raised by the SDK call: always one of our
    :class:`~rerank_cache.errors.DashScopeError` (wrapped in
    :class:`~rerank_cache.client.retry.RetryableError` when it is retried).

    ``base_url`` must already be redacted: it goes into messages and retry warnings.
    """
    name = type(exc).__name__
    if _is_signature_mismatch(exc):
        # Checked before the table, whose TypeError row means a bad body.
        return DashScopeError(
            f"The installed dashscope SDK ({_installed_dashscope()}) does not accept the call "
            f"rerank-cache makes ({name}: {exc}); rerank-cache supports dashscope"
            f"{SUPPORTED_DASHSCOPE}. Install a supported version."
        )
    for row in exception_table():
        if isinstance(exc, row.types):
            error = row.error(row.message.format(timeout=timeout, base_url=base_url, name=name))
            return RetryableError(error) if row.retryable else error
    # The SDK raises its own exception classes too (and may add more): none escapes untyped,
    # so on_error applies. Its message is not shown: it may hold the request.
    return DashScopeError(
        f"The dashscope SDK ({_installed_dashscope()}) raised {name} talking to {base_url}; "
        "nothing was cached. The cause is chained to this error."
    )


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    if not headers:
        return None
    lowered = name.lower()
    for key, value in headers.items():
        if str(key).lower() == lowered:
            return str(value)
    return None


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def status_error(
    response: Any, status: int, request_id: str | None, *, model: str, api_key: str
) -> Exception:
    """Return what to raise for a non-200 ``response``, by :data:`STATUS_TABLE`."""
    code = _leaf(response, "code")
    code = code if isinstance(code, str) and code else None
    raw = _leaf(response, "message")
    detail = _redact(str(raw), api_key) if raw else "no message"
    what = f"DashScope returned HTTP {status}" + (f" {code}" if code else "")
    what += f": {detail}"
    if request_id:
        what += f" (request id {request_id})"
    what += "."
    row = next((r for r in STATUS_TABLE if r.matches(status, code)), _OTHER_STATUS)
    message = what + row.hint.format(model=model)
    error: APIError
    retry_after = None
    if issubclass(row.error, RateLimitError):
        retry_after = parse_retry_after(_header(_part(response, "headers"), "Retry-After"))
        error = row.error(
            message, status=status, code=code, request_id=request_id, retry_after=retry_after
        )
    else:
        error = row.error(message, status=status, code=code, request_id=request_id)
    return RetryableError(error, retry_after) if row.retryable else error


#: The largest count the stores' counters hold (a signed 64-bit SQLite integer).
_MAX_TOKENS = 2**63 - 1

#: What a field of a JSON body can hold (anything else, such as a test double's made-up
#: attribute, is no value at all).
_JSON_VALUES = (str, int, float, bool, list, dict, type(None))
_JSON_TYPES = frozenset(_JSON_VALUES)


def _part(container: Any, name: str) -> Any:
    """A field of a response or a part of one, in every shape the SDK's types allow.

    The SDK's own response objects are dicts that also allow attribute access; tests (and
    the zvec suites that patch ``TextReRank.call``) build plain dicts or plain objects.
    """
    if isinstance(container, dict):  # the SDK's types: a C-level check before the ABC's
        return container.get(name)
    if container is None:
        return None
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def _leaf(container: Any, name: str) -> Any:
    """A scalar field (:func:`_part`), or None where it holds no JSON value."""
    value = _part(container, name)
    if type(value) in _JSON_TYPES:  # exact types first: one set lookup per field
        return value
    return value if isinstance(value, _JSON_VALUES) else None


def _is_finite_number(value: object) -> bool:
    """Whether ``value`` is an int or float that converts to a finite float."""
    if type(value) is float:  # what every score is
        return math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        # An int past ~1.8e308 has no float: float() raises, isfinite() would too.
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: object) -> str:
    """``repr(value)``, cut short: a hostile answer may carry a 10,000-digit number."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "(huge int)"
    return text if len(text) <= 60 else text[:57] + "..."


def check(
    response: Any, texts: tuple[str, ...], attempt: int, *, model: str, api_key: str
) -> BatchResult:
    """Return the scores of ``response`` to a request for ``texts``, or raise.

    Raises:
        RetryableError: a status worth retrying (429, 5xx).
        DashScopeError: any other error status, or a 200 that does not score every text
            exactly once with a finite number.
    """
    status = _leaf(response, "status_code")
    status = status if isinstance(status, int) and not isinstance(status, bool) else 0
    request_id = _leaf(response, "request_id")
    request_id = request_id if isinstance(request_id, str) and request_id else None
    if status != HTTPStatus.OK:
        raise status_error(response, status, request_id, model=model, api_key=api_key)
    results = _part(_part(response, "output"), "results")
    if not isinstance(results, (list, tuple)):
        raise MalformedResponseError(
            "DashScope answered 200 without output.results; nothing was cached.",
            request_id=request_id,
        )
    scores: list[float | None] = [None] * len(texts)
    for item in results:
        index, score = _leaf(item, "index"), _leaf(item, "relevance_score")
        if index is None or score is None:
            raise MalformedResponseError(
                "DashScope returned a result without index or relevance_score; nothing was cached.",
                request_id=request_id,
            )
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(texts):
            raise MalformedResponseError(
                f"DashScope returned result index {_short(index)} for a request of "
                f"{len(texts)} documents; nothing was cached.",
                request_id=request_id,
            )
        if not _is_finite_number(score):
            raise MalformedResponseError(
                f"DashScope returned relevance_score {_short(score)}, not a finite number; "
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
    tokens = _leaf(_part(response, "usage"), "total_tokens")
    if tokens is None:
        tokens = 0  # usage is bookkeeping: an answer without it still has its scores
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= _MAX_TOKENS:
        raise MalformedResponseError(
            f"DashScope returned usage.total_tokens {_short(tokens)}, not a count the "
            "usage counters can hold; nothing was cached.",
            request_id=request_id,
        )
    total_tokens = tokens
    return BatchResult(
        texts=texts,
        scores=tuple(s for s in scores if s is not None),
        total_tokens=total_tokens,
        request_id=request_id,
        attempts=attempt,
    )
