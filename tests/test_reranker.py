"""QwenReRanker: zvec-compatible construction and rerank(), driven through the real SDK."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from rerank_cache import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    Doc,
    MalformedResponseError,
    NoDocumentsError,
    QwenReRanker,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
    TransportError,
)
from rerank_cache.planning import estimate_tokens
from rerank_cache.testing import MALFORM_KINDS, DashScopeServer, count_tokens, score

from .helpers import API_KEY, SleepRecorder, make_docs, run_threads

# -- construction ------------------------------------------------------------------------


def test_constructor_seed_signature_and_properties(make_reranker: Callable[..., Any]) -> None:
    """The seed's constructor works with keywords and exposes its properties."""
    r = make_reranker("what is zvec", topn=3, model="qwen3-rerank", instruct="Rank docs.")
    assert (r.query, r.topn, r.rerank_field, r.model) == (
        "what is zvec",
        3,
        "content",
        "qwen3-rerank",
    )
    assert r.instruct == "Rank docs."


def test_constructor_accepts_old_positional_order() -> None:
    """Older zvec's positional order (query, topn, rerank_field, model, api_key) works."""
    r = QwenReRanker("q", 4, "title", "qwen3-rerank", API_KEY)
    assert (r.topn, r.rerank_field, r.model) == (4, "title", "qwen3-rerank")


def test_constructor_accepts_zvec_08_positional_order() -> None:
    """zvec 0.8.0's positional order (query, rerank_field, model, api_key) works too."""
    r = QwenReRanker("q", "title", "qwen3-rerank", API_KEY)
    assert (r.topn, r.rerank_field, r.model) == (10, "title", "qwen3-rerank")
    r2 = QwenReRanker("q", "title", api_key=API_KEY)
    assert (r2.rerank_field, r2.model) == ("title", "gte-rerank-v2")


@pytest.mark.parametrize("query", [None, "", "   "])
def test_empty_query_is_value_error(query: str | None) -> None:
    """An empty or missing query raises ValueError, as zvec does."""
    with pytest.raises(ValueError, match="Query is required"):
        QwenReRanker(query, rerank_field="content", api_key=API_KEY)


def test_missing_rerank_field_is_value_error() -> None:
    """rerank_field=None raises ValueError naming the argument."""
    with pytest.raises(ValueError, match="rerank_field"):
        QwenReRanker("q", api_key=API_KEY)


@pytest.mark.parametrize("topn", [0, -1, 1.5, True])
def test_bad_topn_is_value_error(topn: Any) -> None:
    """topn must be a positive integer."""
    with pytest.raises(ValueError, match="topn"):
        QwenReRanker("q", topn=topn, rerank_field="content", api_key=API_KEY)


def test_no_api_key_is_value_error() -> None:
    """Without an argument or DASHSCOPE_API_KEY the error says how to provide a key."""
    with pytest.raises(ValueError, match="DASHSCOPE_API_KEY"):
        QwenReRanker("q", rerank_field="content")


def test_env_key_and_base_url_read_at_construction(
    monkeypatch: pytest.MonkeyPatch, server: DashScopeServer
) -> None:
    """DASHSCOPE_API_KEY and DASHSCOPE_HTTP_BASE_URL are read when the reranker is built."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.base_url)
    r = QwenReRanker("vector", rerank_field="content")
    assert r.base_url == server.base_url
    assert r.rerank([make_docs(3)])
    assert server.stats.ok_requests == 1


def test_default_base_url_is_dashscope() -> None:
    """With no argument or variable the reranker targets DashScope's default endpoint."""
    r = QwenReRanker("q", rerank_field="content", api_key=API_KEY)
    assert r.base_url == "https://dashscope.aliyuncs.com/api/v1"


def test_repr_never_shows_key() -> None:
    """The key appears in no repr."""
    r = QwenReRanker("q", rerank_field="content", api_key=API_KEY)
    assert API_KEY not in repr(r)
    assert API_KEY not in repr(r._client)


# -- rerank behaviour --------------------------------------------------------------------


def test_scores_are_dashscope_scores_sorted(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Each returned doc carries DashScope's score for its text, best first."""
    docs = make_docs(30)
    r = make_reranker("vector database")
    out = r.rerank([docs], topn=30)
    assert len(out) == 30
    for d in out:
        assert d.score == score("vector database", d.field("content"))
    assert [d.score for d in out] == sorted((d.score for d in out), reverse=True)
    assert all(isinstance(d, Doc) for d in out)
    assert docs[0].score == 1.0  # the caller's documents are untouched


def test_every_text_scored_topn_applied_locally(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """top_n is never sent: all texts are scored and topn cuts locally."""
    r = make_reranker(topn=2)
    out = r.rerank([make_docs(10)])
    assert len(out) == 2
    (req,) = server.requests_log
    assert req.top_n is None
    assert len(req.documents) == 10


def test_topn_argument_overrides_default(make_reranker: Callable[..., QwenReRanker]) -> None:
    """rerank(lists, topk) as zvec 0.8.0 calls it overrides the constructor's topn."""
    r = make_reranker(topn=2)
    assert len(r.rerank([make_docs(10)], 7)) == 7
    with pytest.raises(ValueError, match="topn"):
        r.rerank([make_docs(3)], 0)


def test_dict_and_list_inputs_give_same_result(
    make_reranker: Callable[..., QwenReRanker],
) -> None:
    """The seed's dict form and zvec 0.8.0's list form rank identically."""
    a, b = make_docs(8, seed=1), make_docs(8, seed=2)
    b = [d._replace(id=f"b{d.id}") for d in b]
    r = make_reranker()
    by_dict = r.rerank({"content_vec": a, "title_vec": b}, topn=16)
    by_list = r.rerank([a, b], topn=16)
    assert [(d.id, d.score) for d in by_dict] == [(d.id, d.score) for d in by_list]


def test_dedup_by_id_and_identical_texts_sent_once(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Same id across lists is scored once; identical texts under different ids sent once."""
    docs = [
        Doc("a", fields={"content": "vector database"}),
        Doc("b", fields={"content": "vector database"}),
        Doc("c", fields={"content": "bread oven"}),
    ]
    out = make_reranker().rerank([docs, [docs[0], docs[2]]])
    assert sorted(d.id for d in out) == ["a", "b", "c"]
    (req,) = server.requests_log
    assert sorted(req.documents) == ["bread oven", "vector database"]
    assert out[0].score == out[1].score  # a and b share a text: a tie in input order
    assert [d.id for d in out[:2]] == ["a", "b"]


def test_textless_documents_skipped(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Documents with a missing, None, empty, blank or non-string field are never sent."""
    docs = [
        Doc("a", fields={"content": "  vector  "}),
        Doc("b", fields={}),
        Doc("c", fields={"content": None}),
        Doc("d", fields={"content": "   "}),
        Doc("e", fields={"content": 7}),
    ]
    out = make_reranker().rerank([docs])
    assert [d.id for d in out] == ["a"]
    (req,) = server.requests_log
    assert list(req.documents) == ["vector"]


def test_empty_input_returns_empty(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """No documents at all gives [] and sends nothing."""
    r = make_reranker()
    assert r.rerank([]) == []
    assert r.rerank({}) == []
    assert r.rerank([[], []]) == []
    assert server.stats.requests == 0


def test_documents_without_text_raise_no_documents(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Documents present but none with text: NoDocumentsError, a ValueError as in zvec."""
    with pytest.raises(NoDocumentsError, match="No documents to rerank") as info:
        make_reranker().rerank([[Doc("a", fields={"title": "x"})]])
    assert isinstance(info.value, ValueError)
    assert server.stats.requests == 0


def test_zvec_docs_come_back_as_zvec_docs(make_reranker: Callable[..., QwenReRanker]) -> None:
    """Callers passing zvec.Doc get zvec.Doc back with the rerank score."""
    zvec = pytest.importorskip("zvec")
    docs = [
        zvec.Doc(id=f"z{i}", score=0.5, fields={"content": t})
        for i, t in enumerate(["vector database", "bread oven", "cache rerank"])
    ]
    out = make_reranker("vector database").rerank([docs], 3)
    assert all(type(d) is zvec.Doc for d in out)
    assert out[0].id == "z0"
    assert out[0].score == score("vector database", "vector database")


def test_1200_documents_split_within_both_limits(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """1,200 documents of ~400 characters: several requests, each within both limits."""
    docs = make_docs(1200, chars=400)
    r = make_reranker("vector database cache latency")
    out = r.rerank([docs], topn=1200)
    assert len(out) == 1200
    log = server.requests_log
    assert len(log) >= 3
    assert all(req.status == 200 for req in log)
    assert sum(len(req.documents) for req in log) == 1200
    q = count_tokens("vector database cache latency")
    for req in log:
        assert len(req.documents) <= 500
        assert sum(q + count_tokens(d) for d in req.documents) <= 30_000
    assert {d.id: d.score for d in out} == {
        d.id: score("vector database cache latency", d.field("content")) for d in docs
    }
    assert r.usage.requests == len(log)
    assert r.usage.total_tokens == server.stats.tokens
    assert server.stats.max_in_flight >= 2  # requests ran concurrently


def test_cjk_documents_stay_within_token_budget(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """CJK text, one token per character, is split so no request exceeds the budget."""
    text = "向量数据库缓存重排序" * 40
    docs = [Doc(f"c{i}", fields={"content": f"{i}{text}"}) for i in range(200)]
    out = make_reranker("向量数据库").rerank([docs], 200)
    assert len(out) == 200
    assert len(server.requests_log) >= 2
    assert all(req.status == 200 for req in server.requests_log)


def test_overlong_text_is_trimmed_to_item_limit(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """A document far over the per-item limit is trimmed, never rejected."""
    docs = [Doc("long", fields={"content": "vector " * 50_000}), *make_docs(3)]
    out = make_reranker().rerank([docs], 4)
    assert len(out) == 4
    (req,) = server.requests_log
    assert all(estimate_tokens(d) <= 4000 for d in req.documents)


def test_instruct_sent_and_changes_scores(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """instruct is sent as parameters.instruct and the score reflects it."""
    docs = make_docs(3)
    out = make_reranker(model="qwen3-rerank", instruct="Find caching docs.").rerank([docs])
    (req,) = server.requests_log
    assert req.instruct == "Find caching docs."
    text = out[0].field("content")
    assert out[0].score == score(
        "vector database cache", text, model="qwen3-rerank", instruct="Find caching docs."
    )


# -- failures and retries ----------------------------------------------------------------


def test_429_retry_after_then_success(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """A 429 with Retry-After is waited out exactly, then the retry succeeds."""
    server.fail_next(429, retry_after=1.5)
    out = make_reranker().rerank([make_docs(5)])
    assert len(out) == 5
    assert sleeps.waits == [1.5]
    assert [req.status for req in server.requests_log] == [429, 200]


def test_retry_after_decimal_and_backoff_without_header(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """Without Retry-After, waits grow exponentially (with jitter) between 5xx retries."""
    server.fail_next(500, times=1)
    server.fail_next(503, times=1)
    r = make_reranker(retry=RetryPolicy(sleep=sleeps, backoff_base=1.0, max_attempts=3))
    assert len(r.rerank([make_docs(2)])) == 2
    assert len(sleeps.waits) == 2
    assert 0.5 <= sleeps.waits[0] <= 1.0
    assert 1.0 <= sleeps.waits[1] <= 2.0
    assert r.usage.retries == 2


def test_persistent_429_raises_rate_limit_error(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """Throttling past the attempts raises RateLimitError with the code and Retry-After."""
    server.fail_next(429, retry_after="0.25", times=10)
    r = make_reranker(retry=RetryPolicy(sleep=sleeps, max_attempts=3))
    with pytest.raises(RateLimitError) as info:
        r.rerank([make_docs(2)])
    assert info.value.status == 429
    assert info.value.code == "Throttling.RateQuota"
    assert info.value.retry_after == 0.25
    assert info.value.request_id
    assert "3 attempts" in str(info.value)
    assert server.stats.requests == 3


def test_retry_after_beyond_deadline_gives_up_at_once(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """A Retry-After that would pass the overall deadline is not waited for."""
    server.fail_next(429, retry_after=600)
    r = make_reranker(retry=RetryPolicy(sleep=sleeps, deadline=30))
    with pytest.raises(RateLimitError, match="deadline"):
        r.rerank([make_docs(2)])
    assert sleeps.waits == []


@pytest.mark.parametrize("status", [400, 404, 413])
def test_other_4xx_never_retried(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, status: int
) -> None:
    """400, 404 and 413 surface at once as APIError with status, code and request id."""
    server.fail_next(status, message="nope")
    with pytest.raises(APIError) as info:
        make_reranker().rerank([make_docs(2)])
    assert info.value.status == status
    assert info.value.code
    assert info.value.request_id
    assert server.stats.requests == 1


def test_401_is_clear_and_never_contains_key(
    server: DashScopeServer, sleeps: SleepRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused key gives AuthenticationError naming the region fix, without the key."""
    with DashScopeServer(api_keys=["sk-the-right-one"]) as strict:
        r = QwenReRanker(
            "q",
            rerank_field="content",
            api_key=API_KEY,
            base_url=strict.base_url,
            retry=RetryPolicy(sleep=sleeps),
        )
        with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as info:
            r.rerank([make_docs(2)])
    message = str(info.value)
    assert info.value.status == 401
    assert "InvalidApiKey" in message
    assert "region" in message
    assert API_KEY not in message
    assert API_KEY not in repr(info.value)
    assert API_KEY not in caplog.text
    assert strict.stats.requests == 1  # not retried


def test_dropped_connection_retried(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """Dropped connections are retried (the SDK retries once itself, we retry after)."""
    server.drop_next(times=2)
    assert len(make_reranker().rerank([make_docs(2)])) == 2
    assert len(sleeps.waits) == 1


def test_dropped_connections_exhaust_into_transport_error(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """Connections that keep dropping end in TransportError."""
    server.drop_next(times=20)
    r = make_reranker(retry=RetryPolicy(sleep=sleeps, max_attempts=2))
    with pytest.raises(TransportError):
        r.rerank([make_docs(2)])


def test_slow_response_times_out_and_retries(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """A response slower than the timeout is a timeout; the retry gets the answer."""
    server.delay_next(2.0)
    r = make_reranker(timeout=0.3)
    assert len(r.rerank([make_docs(2)])) == 2
    assert len(sleeps.waits) == 1


def test_timeouts_exhaust_into_request_timeout_error(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """Timeouts on every attempt raise RequestTimeoutError (a TransportError)."""
    server.delay_next(1.0, times=2)
    r = make_reranker(timeout=0.2, retry=RetryPolicy(sleep=sleeps, max_attempts=2))
    with pytest.raises(RequestTimeoutError):
        r.rerank([make_docs(2)])


@pytest.mark.parametrize("kind", sorted(MALFORM_KINDS))
def test_malformed_200_is_malformed_response_error(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, kind: str
) -> None:
    """A 200 that is not a valid rerank result is an error, never a wrong score."""
    server.malform_next(kind)
    with pytest.raises(MalformedResponseError, match="nothing was cached"):
        make_reranker().rerank([make_docs(4)])


def test_failure_in_one_of_several_requests_raises(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """When one of several concurrent requests fails for good, rerank raises."""
    server.fail_next(400)
    r = make_reranker(max_concurrency=1)
    with pytest.raises(APIError):
        r.rerank([make_docs(1200, chars=400)])
    assert r.usage.failures == 1


def test_two_keys_two_threads_each_send_their_own(server: DashScopeServer) -> None:
    """Two rerankers with different keys, used from two threads, each send their own key."""
    import hashlib

    import dashscope

    global_key = dashscope.api_key  # whatever the SDK read from the environment at import
    keys = ["sk-alpha-1111", "sk-beta-2222"]
    rerankers = [
        QwenReRanker(f"query {k}", rerank_field="content", api_key=k, base_url=server.base_url)
        for k in keys
    ]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait(timeout=5)
        for _ in range(5):
            rerankers[i].rerank([make_docs(5)])

    assert not run_threads(2, work)
    fingerprints = {hashlib.sha256(k.encode()).hexdigest()[:8]: k for k in keys}
    seen: dict[str, set[str]] = {}
    for req in server.requests_log:
        assert req.api_key_fingerprint is not None
        seen.setdefault(fingerprints[req.api_key_fingerprint], set()).add(req.query or "")
    assert seen == {k: {f"query {k}"} for k in keys}
    assert dashscope.api_key == global_key  # the SDK's global key is never set by us


def test_with_query_shares_client(make_reranker: Callable[..., QwenReRanker]) -> None:
    """with_query gives a copy for another query sharing settings and usage totals."""
    r = make_reranker("first", topn=3)
    r2 = r.with_query("second")
    assert (r2.query, r2.topn, r2.rerank_field) == ("second", 3, "content")
    r2.rerank([make_docs(3)])
    assert r.usage.requests == 1
    with pytest.raises(ValueError, match="Query"):
        r.with_query("")


def test_retry_policy_validates() -> None:
    """Nonsensical retry settings are rejected up front."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=0)
    with pytest.raises(ConfigurationError):
        QwenReRanker("q", rerank_field="c", api_key=API_KEY, instruct="")


def test_ambiguous_positional_mix_is_refused() -> None:
    """A string topn with a rerank_field that is no model name is refused, not guessed."""
    with pytest.raises(ConfigurationError, match="keywords"):
        QwenReRanker("q", "title", rerank_field="content", api_key=API_KEY)  # type: ignore[call-overload]


def test_interrupt_stops_queued_requests(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """An interrupt during a multi-request call starts no further requests."""
    r = make_reranker(max_concurrency=1)
    plan = r.prepare([make_docs(1200, chars=400)])
    calls: list[int] = []

    def interrupt(batch: object) -> None:
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        r.score_texts(plan.texts, on_batch=interrupt)  # type: ignore[arg-type]
    assert server.stats.requests <= 2  # the completed one, and at most one in flight
    assert len(calls) >= 1


def test_whitespace_and_control_heavy_documents_stay_within_limits(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Documents of mostly spaces or control characters never make a request DashScope
    would refuse (16 MiB body, token budget)."""
    spaces = [Doc(f"s{i}", fields={"content": ("word" + " " * 1000) * 200}) for i in range(90)]
    junk = [Doc(f"j{i}", fields={"content": "x" + "\x01" * 300_000}) for i in range(10)]
    out = make_reranker().rerank([spaces + junk], 100)
    assert len(out) == 100
    assert all(req.status == 200 for req in server.requests_log)


def test_max_rpm_waits_and_respects_the_deadline(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, sleeps: SleepRecorder
) -> None:
    """max_rpm spaces requests (waits go through the retry policy's sleep) and a wait that
    would pass the deadline is refused instead of taken."""
    from rerank_cache import RateLimiter

    limiter = RateLimiter(60)
    r = make_reranker(max_rpm=limiter, retry=RetryPolicy(sleep=sleeps, deadline=0.5))
    r.rerank([make_docs(2)])
    assert sleeps.waits == [0.0]
    with pytest.raises(RequestTimeoutError, match="max_rpm"):
        r.rerank([make_docs(2, seed=1)])
    assert server.stats.requests == 1
