"""Shared fixtures: a local DashScope server, rerankers pointed at it, caches in tmp dirs,
a private redis-server (helpers that are not fixtures live in ``helpers.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rerank_cache import QwenReRanker, RetryPolicy, ScoreCache
from rerank_cache.testing import DashScopeServer

from .helpers import API_KEY, QUERY, SleepRecorder
from .redis_fixture import redis_cluster, redis_server  # noqa: F401 - session fixtures


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's real key, endpoint or cache directory."""
    for name in (
        "DASHSCOPE_API_KEY",
        "DASHSCOPE_HTTP_BASE_URL",
        "XDG_CACHE_HOME",
        "RERANK_CACHE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RERANK_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def server() -> Iterator[DashScopeServer]:
    """A fresh local DashScope server on 127.0.0.1."""
    with DashScopeServer() as srv:
        yield srv


@pytest.fixture
def sleeps() -> SleepRecorder:
    """A sleep recorder for RetryPolicy(sleep=...)."""
    return SleepRecorder()


@pytest.fixture
def make_reranker(server: DashScopeServer, sleeps: SleepRecorder) -> Callable[..., QwenReRanker]:
    """Build a QwenReRanker pointed at the local server (retries do not really sleep)."""

    def make(query: str = QUERY, **kwargs: Any) -> QwenReRanker:
        kwargs.setdefault("rerank_field", "content")
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", server.base_url)
        kwargs.setdefault("retry", RetryPolicy(sleep=sleeps, backoff_base=0.01))
        kwargs.setdefault("timeout", 5.0)
        return QwenReRanker(query, **kwargs)

    return make


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ScoreCache]:
    """A real diskcache-backed ScoreCache in a temporary directory."""
    with ScoreCache(tmp_path / "scores") as store:
        yield store
