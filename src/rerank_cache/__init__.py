"""rerank-cache: DashScope TextReRank with a per-pair score cache.

Never pay twice for the same (model, instruct, query, document) score.
"""

from __future__ import annotations

from .cached import CachedReRanker
from .client import BatchResult, RetryPolicy, ScoreResult, UsageTotals
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
from .store import CacheStats, ModelStats, ScoreCache, default_cache_dir, read_stats
from .warm import InvalidLineError, LineSkipped, LineWarmed, WarmSummary, warm

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
    "TransportError",
    "UsageTotals",
    "WarmSummary",
    "__version__",
    "default_cache_dir",
    "estimate_tokens",
    "limits_for",
    "read_stats",
    "score_key",
    "warm",
]
