"""Fault tolerance, bad input and secrets: nothing lost, nothing leaked, no wrong scores."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank_cache import (
    APIError,
    CachedReRanker,
    ConfigurationError,
    Doc,
    MalformedResponseError,
    NoDocumentsError,
    QwenReRanker,
    RateLimitError,
    RetryPolicy,
    ScoreCache,
)
from rerank_cache.testing import DashScopeServer, score

from .helpers import SRC, SleepRecorder, cached, make_docs, reranker_at, run_threads

# -- fault injection ---------------------------------------------------------------------


def test_429_storm_with_retry_after_is_ridden_out(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    sleeps: SleepRecorder,
) -> None:
    """A storm of 429s with Retry-After is waited out request by request; all scores land."""
    server.fail_next(429, retry_after=0.5, times=3)
    r = cached(make_reranker, cache, retry=RetryPolicy(sleep=sleeps, max_attempts=5))
    out = r.rerank([make_docs(10)], 10)
    assert len(out) == 10
    assert sleeps.waits == [0.5, 0.5, 0.5]
    assert cache.stats().entries == 10


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_bursts_are_retried(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    status: int,
) -> None:
    """Bursts of 500/503 are retried with backoff and then succeed."""
    server.fail_next(status, times=2)
    out = cached(make_reranker, cache).rerank([make_docs(4)], 4)
    assert [d.score for d in out] == sorted(
        (score("vector database cache", d.field("content")) for d in out), reverse=True
    )
    assert server.stats.errors_by_status == {status: 2}


def test_fewer_results_than_sent_is_never_cached(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache, server: DashScopeServer
) -> None:
    """A 200 that scores fewer documents than were sent caches nothing."""
    server.malform_next("fewer_results")
    with pytest.raises(MalformedResponseError, match="scored 3 of 4"):
        cached(make_reranker, cache).rerank([make_docs(4)])
    assert cache.stats().entries == 0


@pytest.mark.parametrize(
    "kind", ["index_out_of_range", "missing_score", "nan_score", "missing_output", "not_json"]
)
def test_partial_success_keeps_good_requests_and_never_caches_bad(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    kind: str,
) -> None:
    """With one malformed response among several requests, only the valid ones are cached."""
    docs = make_docs(1200, chars=400, seed=3)
    r = cached(make_reranker, cache, max_concurrency=1)
    plan = r.prepare([docs])
    poison = plan.texts[-1]  # in the last request
    server.malform_next(kind, match=poison)
    with pytest.raises(MalformedResponseError):
        r.rerank([docs])
    entries = cache.stats().entries
    assert 0 < entries < len(plan.texts)
    # Everything stored is exactly what DashScope returned for that pair.
    from rerank_cache.keys import KeyBuilder

    kb = KeyBuilder(r.model, None, r.query, scorer=r.scorer_id)
    found = cache.get_many(kb.key(t) for t in plan.texts)
    assert len(found) == entries
    by_key = {kb.key(t): t for t in plan.texts}
    assert all(v == score(r.query, by_key[k]) for k, v in found.items())
    assert kb.key(poison) not in found


# -- graceful degradation ----------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True])
def test_fallback_returns_retrieval_order(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    sleeps: SleepRecorder,
    caplog: pytest.LogCaptureFixture,
    wrap: bool,
) -> None:
    """on_error='fallback': retrieval order, original scores, a warning, and a count."""
    docs = make_docs(6)
    server.fail_next(503, times=10)
    r: Any = make_reranker(
        on_error="fallback", topn=4, retry=RetryPolicy(sleep=sleeps, max_attempts=2)
    )
    if wrap:
        r = CachedReRanker(r, cache)
    with caplog.at_level(logging.WARNING):
        out = r.rerank([docs])
    assert [(d.id, d.score) for d in out] == [(d.id, d.score) for d in docs[:4]]
    assert "retrieval order" in caplog.text
    if wrap:
        assert cache.stats().fallbacks == 1
    else:
        assert r.usage.fallbacks == 1


def test_fallback_is_opt_in(
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
    server: DashScopeServer,
    sleeps: SleepRecorder,
) -> None:
    """By default API failures raise; bad input raises even with fallback on."""
    server.fail_next(429, times=10)
    r = cached(make_reranker, cache, retry=RetryPolicy(sleep=sleeps, max_attempts=2))
    assert r.on_error == "raise"
    with pytest.raises(RateLimitError):
        r.rerank([make_docs(3)])
    fb = CachedReRanker(make_reranker(), cache, on_error="fallback")
    with pytest.raises(NoDocumentsError):
        fb.rerank([[Doc("x", fields={})]])
    with pytest.raises(ConfigurationError, match="on_error"):
        make_reranker(on_error="ignore")


# -- crash and contention ------------------------------------------------------------------


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from rerank_cache import ScoreCache
    from rerank_cache.keys import score_key
    with ScoreCache(sys.argv[2]) as cache:
        i = 0
        while True:
            batch = {score_key("m", None, "q", f"doc {i} {j}"): 0.5 for j in range(500)}
            cache.put_many(batch, model="m", api_requests=1, documents_sent=500)
            i += 1
            if i == 3:
                print("writing", flush=True)
""")


def test_sigkill_mid_write_leaves_a_working_cache(tmp_path: Path) -> None:
    """Processes SIGKILLed while writing leave a cache that opens, checks ok and answers."""
    directory = tmp_path / "crash"
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, SRC, str(directory)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with ScoreCache(directory, recover=False) as store:
        assert store.check().ok
        from rerank_cache import score_key

        assert store.get_many([score_key("m", None, "q", "doc 0 0")])
        assert store.stats().entries >= 1500


def test_writers_with_short_lock_timeouts_never_raise(
    tmp_path: Path, server: DashScopeServer
) -> None:
    """Several threads writing with tiny lock timeouts: no exception reaches a caller."""
    directory = tmp_path / "contended"
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        with ScoreCache(directory, timeout=0.001) as store:
            r = CachedReRanker(reranker_at(server.base_url, f"q{n}"), store)
            barrier.wait(timeout=10)
            for i in range(15):
                assert len(r.with_query(f"q{n} {i}").rerank([make_docs(30, seed=i)], 30)) == 30

    assert run_threads(4, work, timeout=120) == []


# -- bad input -----------------------------------------------------------------------------

field_values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
    st.text(max_size=30),
    st.just("   "),
    st.just("lone \ud800 surrogate"),
    st.just("long " * 9000),
    st.just("長" * 5000),
)
docs_strategy = st.lists(
    st.builds(
        lambda i, v: Doc(i, fields={"content": v}),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"]), st.uuids().map(str)),
        field_values,
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lists=st.lists(docs_strategy, max_size=3), as_dict=st.booleans())
def test_any_input_gets_a_defined_result(lists: list[list[Doc]], as_dict: bool) -> None:
    """Odd field values, None or repeated ids, empty lists: a result or a clear error,
    never a request DashScope would reject."""
    with DashScopeServer() as srv:
        r = reranker_at(srv.base_url, "query text", topn=50)
        given_input: Any = {f"v{i}": docs for i, docs in enumerate(lists)} if as_dict else lists
        try:
            out = r.rerank(given_input)
        except NoDocumentsError:
            assert any(lists)
            assert srv.stats.requests == 0
            return
        assert srv.stats.requests == srv.stats.ok_requests  # nothing rejected
        if not any(lists):
            assert out == []
        ids = [d.id for d in out]
        assert len(ids) == len(set(ids))
        for d in out:
            assert d.score is not None
            assert 0.0 <= d.score <= 1.0
        for req in srv.requests_log:
            assert all(doc.strip() for doc in req.documents)
            for doc in req.documents:
                doc.encode("utf-8")


@pytest.mark.parametrize("topn", [0, -3])
def test_topn_zero_or_negative_is_value_error(
    make_reranker: Callable[..., QwenReRanker], topn: int
) -> None:
    """topn of 0 or below is a clear ValueError before anything is sent."""
    with pytest.raises(ValueError, match="topn must be at least 1"):
        make_reranker().rerank([make_docs(2)], topn)


def test_none_and_repeated_ids_follow_first_occurrence(
    make_reranker: Callable[..., QwenReRanker],
) -> None:
    """Repeated ids (None included) keep the first document that has text."""
    docs = [
        Doc(None, fields={"content": "first none"}),  # type: ignore[arg-type]
        Doc(None, fields={"content": "second none"}),  # type: ignore[arg-type]
        Doc("x", fields={"content": "x one"}),
        Doc("x", fields={"content": "x two"}),
    ]
    out = make_reranker().rerank([docs])
    assert sorted(d.field("content") for d in out) == ["first none", "x one"]


# -- secrets -------------------------------------------------------------------------------


def test_api_key_never_leaks(
    tmp_path: Path,
    server: DashScopeServer,
    sleeps: SleepRecorder,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After successes and every kind of failure, the key is in no file, log, error or repr."""
    secret = "sk-super-secret-4242424242"
    messages: list[str] = []
    directory = tmp_path / "secret-cache"
    with caplog.at_level(logging.DEBUG), ScoreCache(directory) as store:
        r = CachedReRanker(
            reranker_at(
                server.base_url,
                "q",
                api_key=secret,
                retry=RetryPolicy(sleep=sleeps, max_attempts=2),
            ),
            store,
        )
        r.rerank([make_docs(5)])
        for inject in (
            lambda: server.fail_next(500, times=2),
            lambda: server.fail_next(429, retry_after=1, times=2),
            lambda: server.fail_next(400),
            lambda: server.drop_next(times=4),
            lambda: server.malform_next("not_json"),
        ):
            inject()
            with pytest.raises(Exception) as info:  # noqa: PT011 - any error; checked below
                r.with_query(f"fresh {len(messages)}").rerank([make_docs(3)])
            messages += [str(info.value), repr(info.value), repr(info.value.__cause__)]
        with DashScopeServer(api_keys=["sk-other"]) as strict:
            bad = reranker_at(strict.base_url, "q", api_key=secret)
            with pytest.raises(APIError) as info:
                bad.rerank([make_docs(2)])
            messages += [str(info.value), repr(info.value), repr(bad)]
        messages += [repr(r), repr(store), json.dumps(store.stats().model_dump(mode="json"))]
    captured = capsys.readouterr()
    haystack = "\n".join([*messages, caplog.text, captured.out, captured.err])
    assert secret not in haystack
    for path in directory.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_errors_pickle_and_copy() -> None:
    """DashScope errors survive pickling and copying with their attributes."""
    import copy
    import pickle

    error = RateLimitError("slow down", code="Throttling", request_id="r1", retry_after=2.0)
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is RateLimitError
        assert (str(clone), clone.status, clone.code, clone.request_id, clone.retry_after) == (
            "slow down",
            429,
            "Throttling",
            "r1",
            2.0,
        )


def test_on_error_stale_without_a_cache_raises(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """A bare QwenReRanker has nothing kept to serve: on_error="stale" raises as "raise"; an
    unknown on_error names the three choices."""
    r = make_reranker(on_error="stale")
    assert r.on_error == "stale"
    server.fail_next(503, times=4)
    with pytest.raises(APIError):
        r.rerank([make_docs(3)])
    with pytest.raises(ConfigurationError, match="'raise', 'fallback' or 'stale'"):
        make_reranker(on_error="serve-stale")
