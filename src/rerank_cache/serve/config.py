"""The proxy's settings."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from rerank_cache import ConfigurationError, RetryPolicy

from .auth import TokenSet

__all__ = ["DASHSCOPE_BASE_URL", "ServeConfig", "default_upstream"]

#: DashScope's default (Beijing) endpoint, as the SDK and the library use it.
DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"

#: DashScope's own body limit.
_MAX_BODY_BYTES = 16 * 1024 * 1024


def default_upstream() -> str:
    """``DASHSCOPE_HTTP_BASE_URL`` (read now), else DashScope's default endpoint."""
    return os.environ.get("DASHSCOPE_HTTP_BASE_URL", "").strip() or DASHSCOPE_BASE_URL


@dataclass(frozen=True)
class ServeConfig:
    """How the proxy behaves.

    Attributes:
        upstream: DashScope's API base address (``.../api/v1``).
        timeout: seconds one client request may take in all, retries included; past it
            the client gets 504.
        upstream_timeout: seconds to wait for one upstream HTTP answer.
        retry: how upstream requests are retried (the deadline is capped at ``timeout``).
        max_body_bytes: largest request body; larger ones get 413.
        max_documents: most documents per request; more get 400, as DashScope answers.
        max_concurrency: upstream requests in flight at once for one client request.
        key_ttl: seconds a pass-through key DashScope accepted is trusted without asking
            DashScope again.
        max_keys: most accepted keys remembered at once.
        tokens: server-key mode: the tokens clients present instead of a DashScope key.
        server_key: server-key mode: the DashScope key the proxy uses upstream.
    """

    upstream: str = field(default_factory=default_upstream)
    timeout: float = 60.0
    upstream_timeout: float = 30.0
    retry: RetryPolicy | None = None
    max_body_bytes: int = _MAX_BODY_BYTES
    max_documents: int = 500
    max_concurrency: int = 16
    key_ttl: float = 900.0
    max_keys: int = 10_000
    tokens: TokenSet | None = None
    server_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("timeout", "upstream_timeout", "key_ttl"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        for name in ("max_body_bytes", "max_documents", "max_concurrency", "max_keys"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if not self.upstream.startswith(("http://", "https://")):
            raise ConfigurationError("upstream must be an http:// or https:// URL")
        if (self.tokens is None) != (self.server_key is None):
            raise ConfigurationError(
                "server-key mode needs both tokens (--tokens-file) and the DashScope key "
                "(DASHSCOPE_API_KEY)"
            )
        if self.server_key is not None and not self.server_key.strip():
            raise ConfigurationError("the DashScope key is empty")

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy with its deadline capped at :attr:`timeout`."""
        policy = self.retry or RetryPolicy()
        if policy.deadline is None or policy.deadline > self.timeout:
            return dataclasses.replace(policy, deadline=self.timeout)
        return policy
