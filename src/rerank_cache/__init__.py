"""rerank-cache: DashScope TextReRank with a per-pair score cache.

Never pay twice for the same (model, instruct, query, document) score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Scorer
from .cached import CachedReRanker
from .client.results import BatchResult, ScoreResult, UsageTotals
from .client.retry import RetryPolicy
from .client.sdk import close_async_sessions
from .doc import Doc, DocLike
from .errors import (
    APIError,
    AuthenticationError,
    CacheDirectoryError,
    CacheError,
    ConfigurationError,
    CorruptCacheError,
    DashScopeError,
    MalformedResponseError,
    NoDocumentsError,
    RateLimitError,
    RequestTimeoutError,
    RerankCacheError,
    TransportError,
)
from .keys import score_key
from .planning import ModelLimits, estimate_tokens, limits_for
from .ratelimit import RateLimiter
from .reranker import QwenReRanker
from .stores.disk import ScoreCache
from .stores.disk_admin import read_stats
from .stores.open import default_cache_dir
from .stores.protocols import ScoreStore
from .stores.stats import CacheStats, ModelStats
from .warm import InvalidLineError, LineSkipped, LineWarmed, WarmSummary, warm

if TYPE_CHECKING:
    from .stores.redis import RedisScoreCache as RedisScoreCache

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "BatchResult",
    "CacheDirectoryError",
    "CacheError",
    "CacheStats",
    "CachedReRanker",
    "ConfigurationError",
    "CorruptCacheError",
    "DashScopeError",
    "Doc",
    "DocLike",
    "InvalidLineError",
    "LineSkipped",
    "LineWarmed",
    "MalformedResponseError",
    "ModelLimits",
    "ModelStats",
    "NoDocumentsError",
    "QwenReRanker",
    "RateLimitError",
    "RateLimiter",
    "RequestTimeoutError",
    "RerankCacheError",
    "RetryPolicy",
    "ScoreCache",
    "ScoreResult",
    "ScoreStore",
    "Scorer",
    "TransportError",
    "UsageTotals",
    "WarmSummary",
    "__version__",
    "close_async_sessions",
    "default_cache_dir",
    "estimate_tokens",
    "limits_for",
    "read_stats",
    "score_key",
    "warm",
]


def __getattr__(name: str) -> Any:
    # RedisScoreCache needs the optional redis-py: imported on first use, so that
    # `import rerank_cache` works without it (the error then says what to install). It is
    # left out of __all__ so `from rerank_cache import *` works without it too.
    if name == "RedisScoreCache":
        from .stores.redis import RedisScoreCache

        return RedisScoreCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
