"""Errors raised by rerank-cache.

Every error the library raises on purpose derives from :class:`RerankCacheError`::

    RerankCacheError
    ├── ConfigurationError (also ValueError)   bad arguments, no API key, no documents
    │   └── NoDocumentsError                   nothing left to score
    ├── DashScopeError                         talking to DashScope failed
    │   ├── APIError                           DashScope answered with an error status
    │   │   ├── AuthenticationError            401/403: wrong key, wrong region, no access
    │   │   └── RateLimitError                 429 after every retry
    │   ├── TransportError                     connection dropped or refused
    │   │   └── RequestTimeoutError            no answer within the timeout or deadline
    │   └── MalformedResponseError             a 200 whose body is not a valid rerank result
    └── CacheError                             the score store cannot be used
        ├── CacheDirectoryError                unsafe or unusable cache directory
        └── CorruptCacheError                  the cache file is damaged

Messages say what happened and what to do. No message, repr or log line ever contains the
API key.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "CacheDirectoryError",
    "CacheError",
    "ConfigurationError",
    "CorruptCacheError",
    "DashScopeError",
    "MalformedResponseError",
    "NoDocumentsError",
    "RateLimitError",
    "RequestTimeoutError",
    "RerankCacheError",
    "TransportError",
]


class RerankCacheError(Exception):
    """Base class of every error rerank-cache raises on purpose."""


class ConfigurationError(RerankCacheError, ValueError):
    """A bad argument or setting (also a :class:`ValueError`, as zvec raises)."""


class NoDocumentsError(ConfigurationError):
    """None of the documents has text to score (zvec raises ``ValueError`` here too)."""


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    BaseException.__init__(error, *args)
    error.__dict__.update(state)
    return error


class DashScopeError(RerankCacheError):
    """Talking to DashScope failed.

    Errors of this family can be pickled and copied (they cross process pools, and a
    failed fetch's error is handed to every thread that waited on it).

    Attributes:
        request_id: DashScope's request id when the service answered, else None.
    """

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class APIError(DashScopeError):
    """DashScope answered with an error status.

    Attributes:
        status: the HTTP status code.
        code: DashScope's error code (for example ``InvalidParameter``).
        request_id: DashScope's request id, useful when asking Alibaba Cloud support.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.code = code


class AuthenticationError(APIError):
    """The API key was refused (401) or lacks access to the model (403)."""


class RateLimitError(APIError):
    """DashScope kept throttling (429) until the retries or the deadline ran out.

    Attributes:
        retry_after: the last ``Retry-After`` the service sent, in seconds, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.retry_after = retry_after


class TransportError(DashScopeError):
    """The connection to DashScope failed (refused, dropped, reset)."""


class RequestTimeoutError(TransportError):
    """DashScope did not answer within the request timeout or the overall deadline."""


class MalformedResponseError(DashScopeError):
    """DashScope answered 200 with a body that is not a valid rerank result.

    Nothing from such a response is returned or cached.
    """


class CacheError(RerankCacheError):
    """The score store cannot be used."""


class CacheDirectoryError(CacheError):
    """The cache directory is unsafe (symlink, foreign owner, writable by others) or unusable."""


class CorruptCacheError(CacheError):
    """The cache file is damaged; see docs/cache.md for recovery."""
