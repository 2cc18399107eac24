"""The warming API: parsing lines, streaming events, rate limiting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank_cache import (
    InvalidLineError,
    LineSkipped,
    LineWarmed,
    RateLimiter,
    ScoreCache,
    WarmSummary,
    warm,
)
from rerank_cache.testing import DashScopeServer
from rerank_cache.warm import parse_line

from .helpers import API_KEY


def lines(n: int) -> list[str]:
    return [
        json.dumps({"query": f"q{i}", "documents": [f"doc {i} {j}" for j in range(5)]})
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"documents": []}', "'query' must be a non-empty string"),
        ('{"query": "q"}', "'documents' must be a list"),
        ('{"query": "q", "documents": [1]}', "documents[0] must be a string or an object"),
        ('{"query": "q", "documents": [], "model": ""}', "'model' must be a non-empty"),
        ('{"query": "q", "documents": [], "instruct": 3}', "'instruct' must be a non-empty"),
        (b'\xff\xfe{"query"}', "not valid UTF-8"),
        ("{oops", "not valid JSON"),
    ],
)
def test_parse_line_names_the_problem(raw: str | bytes, problem: str) -> None:
    """Each kind of bad line is an InvalidLineError naming the line and the problem."""
    with pytest.raises(InvalidLineError, match=r"^line 3: ") as info:
        parse_line(raw, 3)
    assert info.value.line == 3
    assert problem in info.value.problem


def test_parse_line_prepares_texts_like_the_reranker() -> None:
    """Texts are stripped and deduplicated; blank, missing or non-string ones are counted,
    not sent."""
    req = parse_line(
        json.dumps({"query": "q", "documents": [" a ", "a", "", {"text": 5}, {"id": 1}]}), 1
    )
    assert req is not None
    assert req.texts == ("a",)
    assert req.without_text == 3
    assert parse_line("   \n", 2) is None


def test_warm_events_and_summary(server: DashScopeServer, cache: ScoreCache) -> None:
    """warm yields one event per line and a summary that matches the server."""
    events = list(warm(lines(7), cache, api_key=API_KEY, base_url=server.base_url, concurrency=2))
    warmed = [e for e in events if isinstance(e, LineWarmed)]
    summary = events[-1]
    assert isinstance(summary, WarmSummary)
    assert sorted(e.line for e in warmed) == list(range(1, 8))
    assert (summary.pairs_seen, summary.scored, summary.api_requests) == (35, 35, 7)
    assert summary.tokens_billed == server.stats.tokens
    assert server.stats.max_in_flight <= 2


def test_warm_skip_invalid_yields_skips(server: DashScopeServer, cache: ScoreCache) -> None:
    """With skip_invalid, bad lines become LineSkipped events."""
    source = [*lines(2), "nope", *lines(1)]
    events = list(warm(source, cache, api_key=API_KEY, base_url=server.base_url, skip_invalid=True))
    assert [e.line for e in events if isinstance(e, LineSkipped)] == [3]
    assert isinstance(events[-1], WarmSummary)
    assert events[-1].lines_skipped == 1


def test_warm_reads_lazily(server: DashScopeServer, cache: ScoreCache) -> None:
    """warm pulls lines from the source as it goes, not all up front."""
    pulled: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        for i, line in enumerate(lines(50)):
            pulled.append(i)
            yield line

    stream = warm(source(), cache, api_key=API_KEY, base_url=server.base_url, concurrency=2)
    next(stream)
    assert len(pulled) <= 2 * 2 + 1
    list(stream)
    assert len(pulled) == 50


def test_rate_limiter_spaces_requests() -> None:
    """At most per_minute acquisitions start per minute, evenly spaced."""
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(60, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limiter.acquire()
    assert waits == [1.0, 1.0, 1.0]
    now[0] += 10
    limiter.acquire()
    assert waits == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(0)


def test_dry_run_tells_repeats_from_cached_pairs(tmp_path: Path) -> None:
    """A dry run counts pairs in the cache apart from pairs an earlier line already has."""
    with ScoreCache(tmp_path / "c") as cache:
        *_, summary = warm([*lines(2), *lines(3)], cache, dry_run=True)
    assert isinstance(summary, WarmSummary)
    assert (summary.already_cached, summary.repeated_in_input, summary.scored) == (0, 10, 15)


def test_fields_found_name_where_the_text_may_be(tmp_path: Path) -> None:
    """Documents without text in ``field`` report their other keys, sorted."""
    line = json.dumps({"query": "q", "documents": [{"id": 1, "body": "x"}, {"content": ""}]})
    with ScoreCache(tmp_path / "c") as cache:
        *_, summary = warm([line], cache, field="content", dry_run=True)
    assert isinstance(summary, WarmSummary)
    assert (summary.pairs_seen, summary.fields_found) == (0, ("body", "id"))
