"""Tests for rerank_cache.testing.DashScopeServer, driven by the real dashscope SDK."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import dashscope
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from rerank_cache import planning
from rerank_cache.testing import (
    MALFORM_KINDS,
    RERANK_PATH,
    DashScopeServer,
    ModelLimits,
    count_tokens,
    score,
    scoring,
)
from rerank_cache.testing.endpoint import Endpoint
from rerank_cache.testing.limits import served_limits
from rerank_cache.testing.scoring import pair_scorer

KEY = "sk-test"
MODEL = "gte-rerank-v2"
QUERY = "what is a vector database"
DOCS = [
    "a vector database stores embeddings",
    "bananas are yellow",
    "what is love",
    "vector search in a database of embeddings",
]


@pytest.fixture
def server() -> Iterator[DashScopeServer]:
    with DashScopeServer(api_keys=[KEY]) as srv:
        yield srv


def rerank(
    srv: DashScopeServer,
    documents: list[str],
    *,
    query: str = QUERY,
    model: str = MODEL,
    api_key: str = KEY,
    **kwargs: Any,
) -> Any:
    return dashscope.TextReRank.call(
        model=model,
        query=query,
        documents=documents,
        api_key=api_key,
        base_address=srv.base_url,
        **kwargs,
    )


def post(
    srv: DashScopeServer,
    payload: object = None,
    *,
    raw: bytes | None = None,
    path: str = RERANK_PATH,
    api_key: str | None = KEY,
) -> tuple[int, dict[str, str], bytes]:
    """POST with urllib; return (status, headers, body) for success and HTTP errors alike."""
    data = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    url = f"http://127.0.0.1:{srv.port}{path}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def body(model: str | None = MODEL, query: str = QUERY, **parameters: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "input": {"query": query, "documents": list(DOCS)},
        "parameters": parameters,
    }
    if model is not None:
        payload["model"] = model
    return payload


def formula(query: str, documents: list[str], item_max: int = 4000) -> int:
    q = min(count_tokens(query), item_max)
    return q * len(documents) + sum(min(count_tokens(d), item_max) for d in documents)


# --- round trip ------------------------------------------------------------------------------


def test_sdk_round_trip_sorted_scores_indexes_and_usage(server: DashScopeServer) -> None:
    """An SDK call gets 200, results sorted by score with right indexes, and billed tokens."""
    resp = rerank(server, DOCS)
    assert resp.status_code == 200
    uuid.UUID(resp.request_id)
    results = resp.output.results
    assert sorted(r.index for r in results) == list(range(len(DOCS)))
    scores = [r.relevance_score for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert r.relevance_score == score(QUERY, DOCS[r.index], model=MODEL)
        assert 0.0 <= r.relevance_score <= 1.0
    assert resp.usage.total_tokens == formula(QUERY, DOCS)
    assert rerank(server, DOCS[:2]).usage.total_tokens == 29  # 7 * 2 + 10 + 5


def test_ties_keep_lower_index_first(server: DashScopeServer) -> None:
    """Equal scores are ordered by ascending document index."""
    resp = rerank(server, ["same text", "same text", "same text"])
    assert [r.index for r in resp.output.results] == [0, 1, 2]


def test_top_n_truncates_to_best(server: DashScopeServer) -> None:
    """top_n returns only the n best results, in the same order as the full ranking."""
    full = [r.index for r in rerank(server, DOCS).output.results]
    top = rerank(server, DOCS, top_n=2)
    assert [r.index for r in top.output.results] == full[:2]
    assert top.usage.total_tokens == formula(QUERY, DOCS)


def test_top_n_larger_than_n_returns_all(server: DashScopeServer) -> None:
    """top_n above the number of documents returns every document."""
    assert len(rerank(server, DOCS, top_n=50).output.results) == len(DOCS)


def test_return_documents(server: DashScopeServer) -> None:
    """return_documents=True adds document.text; otherwise the key is absent on the wire."""
    resp = rerank(server, DOCS, return_documents=True)
    for r in resp.output.results:
        assert r["document"]["text"] == DOCS[r.index]
    status, _, raw = post(server, body())
    assert status == 200
    assert all("document" not in r for r in json.loads(raw)["output"]["results"])
    status, headers, raw = post(server, body(return_documents=True))
    assert headers["Content-Type"] == "application/json"
    assert all("document" in r for r in json.loads(raw)["output"]["results"])


# --- scores ------------------------------------------------------------------------------------


def test_score_is_pointwise(server: DashScopeServer) -> None:
    """A pair's score is the same float whatever other documents share the request."""
    target = "vector databases index embeddings"
    first = rerank(server, [target, "bananas"]).output.results
    second = rerank(server, ["x y z", "weather today", target]).output.results
    s1 = next(r.relevance_score for r in first if r.index == 0)
    s2 = next(r.relevance_score for r in second if r.index == 2)
    assert s1 == s2 == score(QUERY, target)


def test_overlap_scores_higher(server: DashScopeServer) -> None:
    """A document sharing words with the query outscores one sharing none."""
    docs = ["chocolate cake recipe with cream", "what a vector database is"]
    results = rerank(server, docs).output.results
    assert results[0].index == 1
    assert score("向量数据库", "向量数据库是什么") > score("向量数据库", "今天天气很好")
    assert score("Vector DB", "the vector db") > score("Vector DB", "unrelated words")


def test_model_and_instruct_change_the_score(server: DashScopeServer) -> None:
    """Model and instruct are part of the score; instruct tokens are billed."""
    instruct = "Given a web search query, retrieve relevant passages."
    base = rerank(server, DOCS[:1], model="qwen3-rerank").output.results[0].relevance_score
    other_model = rerank(server, DOCS[:1]).output.results[0].relevance_score
    with_instruct = rerank(server, DOCS[:1], model="qwen3-rerank", instruct=instruct)
    assert base != other_model
    assert with_instruct.output.results[0].relevance_score != base
    assert with_instruct.output.results[0].relevance_score == score(
        QUERY, DOCS[0], model="qwen3-rerank", instruct=instruct
    )
    assert with_instruct.usage.total_tokens == formula(QUERY, DOCS[:1]) + count_tokens(instruct)


def test_count_tokens_rule() -> None:
    """count_tokens: letter runs ceil(len/4), digits/punctuation 1, whitespace 0, non-ASCII 1/2."""
    assert count_tokens("") == 0
    assert count_tokens("   \t\n") == 0
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("Hello, world 42") == 7
    assert count_tokens("a-b") == 3
    assert count_tokens("向量数据库") == 5
    assert count_tokens("😀") == 2
    assert count_tokens("café") == 2  # "caf" + "é"


def _counted_by_the_rule(text: str) -> int:
    """count_tokens' documented rule, unit by unit (the slow reference)."""
    letters = sum((len(run) + 3) // 4 for run in re.findall("[A-Za-z]+", text))
    ascii_singles = sum(1 for c in text if c.isascii() and 33 <= ord(c) <= 126 and not c.isalpha())
    others = sum(2 if ord(c) > 0xFFFF else 1 for c in text if not c.isascii() and not c.isspace())
    return letters + ascii_singles + others


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=120)
    | st.text(alphabet=st.characters(max_codepoint=127), max_size=200)
    | st.text(alphabet="abcdefgXYZ \t1,.", max_size=200)
)
def test_count_tokens_equals_its_rule(text: str) -> None:
    """The fast counter (C string methods for ASCII) counts exactly what the rule says."""
    assert count_tokens(text) == _counted_by_the_rule(text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80) | st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_word_split_equals_the_documented_regex(text: str) -> None:
    """Scoring's words (C string methods for ASCII) are the documented regex's tokens."""
    assert scoring._words(text) == scoring._WORD.findall(text.lower())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=80), st.sampled_from([None, "", "Rank."]))
def test_pair_scorer_equals_score(query: str, document: str, instruct: str | None) -> None:
    """The per-query scorer the server uses gives exactly :func:`score`'s value."""
    assert pair_scorer(query, model="qwen3-rerank", instruct=instruct)(document) == score(
        query, document, model="qwen3-rerank", instruct=instruct
    )


# --- auth --------------------------------------------------------------------------------------


def test_wrong_key_is_401_and_never_echoed(server: DashScopeServer) -> None:
    """A key outside api_keys gets 401 InvalidApiKey; the key appears nowhere."""
    secret = "sk-wrong-SECRET-4242"
    resp = rerank(server, DOCS, api_key=secret)
    assert resp.status_code == 401
    assert resp.code == "InvalidApiKey"
    assert resp.message == "Invalid API-key provided."
    assert secret not in str(resp)
    entry = server.requests_log[-1]
    assert entry.api_key_fingerprint == hashlib.sha256(secret.encode()).hexdigest()[:8]
    assert secret not in repr(server.requests_log) + repr(server) + repr(server.stats)


def test_missing_key_is_401(server: DashScopeServer) -> None:
    """A request without Authorization gets 401 InvalidApiKey with a request_id."""
    status, _, raw = post(server, body(), api_key=None)
    payload = json.loads(raw)
    assert status == 401
    assert payload["code"] == "InvalidApiKey"
    uuid.UUID(payload["request_id"])
    assert server.requests_log[-1].api_key_fingerprint is None


def test_any_key_accepted_without_api_keys() -> None:
    """Without api_keys any non-empty key is accepted."""
    with DashScopeServer() as srv:
        assert rerank(srv, DOCS, api_key="anything").status_code == 200


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_reuse_port_lets_servers_share_a_port_and_both_serve() -> None:
    """With reuse_port, a second server binds the first one's port; the kernel spreads new
    connections over both, and each answers its share."""
    with (
        DashScopeServer(api_keys=[KEY], reuse_port=True) as first,
        DashScopeServer(api_keys=[KEY], port=first.port, reuse_port=True) as second,
    ):
        assert second.port == first.port
        for _ in range(40):  # urllib opens a new connection per request
            assert post(first, body())[0] == 200
        counts = [first.stats.ok_requests, second.stats.ok_requests]
    assert sum(counts) == 40
    assert min(counts) > 0  # all 40 to one of two sockets: odds of 2**-39


def test_without_reuse_port_a_taken_port_cannot_be_bound() -> None:
    """The default keeps a server's port its own."""
    with DashScopeServer() as first:
        second = DashScopeServer(port=first.port)
        with pytest.raises(OSError, match="in use") as info:
            second.start()
    assert info.value.errno == errno.EADDRINUSE


def test_api_keys_as_single_string_rejected() -> None:
    """Passing one string as api_keys is a TypeError that does not echo it."""
    with pytest.raises(TypeError) as info:
        DashScopeServer(api_keys="sk-oops-1234")
    assert "sk-oops-1234" not in str(info.value)


# --- limits and validation ---------------------------------------------------------------------


def test_too_many_documents(server: DashScopeServer) -> None:
    """501 documents get 400 InvalidParameter with DashScope's batch-size message."""
    resp = rerank(server, ["doc"] * 501)
    assert resp.status_code == 400
    assert resp.code == "InvalidParameter"
    assert resp.message == (
        "batch size of documents is invalid, it should not be empty or larger than 500"
    )
    assert rerank(server, ["doc"] * 500).status_code == 200


def test_empty_documents_list(server: DashScopeServer) -> None:
    """An empty documents list gets the batch-size message (the SDK refuses to send it)."""
    payload = body()
    payload["input"]["documents"] = []
    status, _, raw = post(server, payload)
    assert status == 400
    assert json.loads(raw)["message"].startswith("batch size of documents is invalid")


def test_max_documents_override() -> None:
    """max_documents overrides a model's limit, and the message names the new limit."""
    with DashScopeServer(max_documents={MODEL: 3}) as srv:
        resp = rerank(srv, DOCS)
        assert resp.status_code == 400
        assert resp.message.endswith("larger than 3")
        assert rerank(srv, DOCS, model="qwen3-rerank").status_code == 200


def test_limits_are_the_reranker_table() -> None:
    """One ModelLimits class; the server enforces planning's table, never less than it."""
    assert ModelLimits is planning.ModelLimits
    with DashScopeServer() as srv:
        assert set(srv.limits) == set(planning.MODEL_LIMITS)
        for model, planned in planning.MODEL_LIMITS.items():
            served = srv.limits[model]
            if model == "qwen3.7-text-rerank":
                assert served.max_documents == planned.max_documents
                assert served.max_item_tokens > planned.max_item_tokens
                assert served.max_request_tokens > planned.max_request_tokens
            else:
                assert served == planned


def test_qwen37_serves_its_documented_item_cap() -> None:
    """qwen3.7-text-rerank bills items up to 32,768 tokens and takes 120,000 per request."""
    doc = "abcd " * 20_000  # 20,000 tokens: over planning's 8,000 per item
    with DashScopeServer() as srv:
        resp = rerank(srv, [doc] * 4, query="q", model="qwen3.7-text-rerank")
        assert resp.status_code == 200
        assert resp.usage.total_tokens == 4 * 20_001
        long_doc = "abcd " * 40_000  # billed at the 32,768 cap
        resp = rerank(srv, [long_doc], query="q", model="qwen3.7-text-rerank")
        assert resp.usage.total_tokens == 32_768 + 1
        resp = rerank(srv, [doc] * 7, query="q", model="qwen3.7-text-rerank")
        assert resp.message == "Range of input length should be [1, 120000], but got 140007"


def test_models_override_with_its_own_char_limit() -> None:
    """A model added with models= is served with its max_item_chars; max_documents keeps it."""
    tiny = ModelLimits(5, 4_000, 30_000, max_item_chars=10)
    with DashScopeServer(models={"tiny": tiny}, max_documents={"tiny": 2}) as srv:
        assert srv.limits["tiny"] == ModelLimits(2, 4_000, 30_000, max_item_chars=10)
        assert rerank(srv, ["a" * 10], query="q", model="tiny").status_code == 200
        resp = rerank(srv, ["a", "a" * 11], query="q", model="tiny")
        assert resp.message == "document index:1 is invalid, it should not be larger than 10"
        resp = rerank(srv, ["a"] * 3, query="q", model="tiny")
        assert resp.message.endswith("larger than 2")


def test_empty_document(server: DashScopeServer) -> None:
    """An empty-string document gets 400 'text input should not be empty.: input.documents'."""
    resp = rerank(server, ["fine", ""])
    assert resp.status_code == 400
    assert resp.code == "InvalidParameter"
    assert resp.message == "text input should not be empty.: input.documents"


def test_document_over_300000_chars(server: DashScopeServer) -> None:
    """A document over 300000 characters is rejected with its index; 300000 is accepted."""
    resp = rerank(server, ["fine", "a" * 300_001], query="q")
    assert resp.status_code == 400
    assert resp.message == "document index:1 is invalid, it should not be larger than 300000"
    assert rerank(server, ["a" * 300_000], query="q").status_code == 200


def test_token_budget(server: DashScopeServer) -> None:
    """Requests over the model's token budget get 400 with the computed length."""
    doc = "abcd " * 3000  # 3000 tokens
    resp = rerank(server, [doc] * 10, query="q")
    assert resp.status_code == 400
    assert resp.code == "InvalidParameter"
    assert resp.message == "Range of input length should be [1, 30000], but got 30010"


def test_items_are_billed_truncated(server: DashScopeServer) -> None:
    """An item over the per-item token limit is billed at the limit."""
    resp = rerank(server, ["abcd " * 5000], query="q")
    assert resp.status_code == 200
    assert resp.usage.total_tokens == 1 + 4000


def test_unknown_model_404(server: DashScopeServer) -> None:
    """An unknown model gets 404 ModelNotFound 'Model not exist.'."""
    resp = rerank(server, DOCS, model="no-such-rerank")
    assert resp.status_code == 404
    assert resp.code == "ModelNotFound"
    assert resp.message == "Model not exist."


def test_missing_model_and_empty_query(server: DashScopeServer) -> None:
    """No model gets 400 BadRequest.EmptyModel; an empty query gets 400 BadRequest.EmptyInput."""
    status, _, raw = post(server, body(model=None))
    assert status == 400
    assert json.loads(raw)["code"] == "BadRequest.EmptyModel"
    resp = rerank(server, DOCS, query="")
    assert resp.status_code == 400
    assert resp.code == "BadRequest.EmptyInput"


def test_malformed_json_400(server: DashScopeServer) -> None:
    """A body that is not JSON gets 400 InvalidParameter in DashScope's error shape."""
    status, headers, raw = post(server, raw=b"{not json")
    payload = json.loads(raw)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert set(payload) == {"request_id", "code", "message"}
    assert payload["code"] == "InvalidParameter"


def test_body_too_large_413() -> None:
    """A body over max_body_bytes gets 413 BadRequest.TooLarge."""
    with DashScopeServer(max_body_bytes=1000) as srv:
        status, _, raw = post(srv, raw=b" " * 5000)
        assert status == 413
        assert json.loads(raw)["code"] == "BadRequest.TooLarge"


def test_unknown_path_404_does_not_consume_faults(server: DashScopeServer) -> None:
    """Other paths get a 404 JSON error and leave queued faults for the rerank endpoint."""
    server.fail_next(500)
    status, _, raw = post(server, body(), path="/api/v1/services/rerank/nope")
    assert status == 404
    uuid.UUID(json.loads(raw)["request_id"])
    assert rerank(server, DOCS).status_code == 500


def test_request_ids_are_fresh(server: DashScopeServer) -> None:
    """Every response carries a new uuid4 request_id."""
    ids = {rerank(server, DOCS[:1]).request_id for _ in range(3)}
    ids.add(rerank(server, DOCS[:1], api_key="bad").request_id)
    assert len(ids) == 4
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_keep_alive_serves_several_requests_per_connection(server: DashScopeServer) -> None:
    """HTTP/1.1 keep-alive: two requests are answered on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        data = json.dumps(body())
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        conn.request("POST", RERANK_PATH, body=data, headers=headers)
        first = conn.getresponse()
        assert first.status == 200
        first.read()
        assert not first.will_close
        sock = conn.sock
        conn.request("POST", RERANK_PATH, body=data, headers=headers)
        second = conn.getresponse()
        assert second.status == 200
        second.read()
        assert conn.sock is sock
    finally:
        conn.close()


# --- fault injection ---------------------------------------------------------------------------


def test_fail_next_429_with_retry_after(server: DashScopeServer) -> None:
    """fail_next(429, retry_after=1.5) reaches the SDK as 429 + Retry-After '1.5', once."""
    server.fail_next(429, retry_after=1.5)
    resp = rerank(server, DOCS)
    assert resp.status_code == 429
    assert resp.code == "Throttling.RateQuota"
    assert resp.headers["Retry-After"] == "1.5"
    uuid.UUID(resp.request_id)
    assert rerank(server, DOCS).status_code == 200


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "InvalidParameter"),
        (401, "InvalidApiKey"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
    ],
)
def test_fail_next_default_codes(server: DashScopeServer, status: int, code: str) -> None:
    """fail_next uses DashScope's default code for the status and sends no Retry-After."""
    server.fail_next(status)
    resp = rerank(server, DOCS)
    assert (resp.status_code, resp.code) == (status, code)
    assert "Retry-After" not in resp.headers


def test_faults_are_fifo_with_times(server: DashScopeServer) -> None:
    """Queued faults apply to the next requests in order, each `times` times."""
    server.fail_next(500, times=2)
    server.fail_next(503, code="ModelUnavailable", message="busy")
    assert server.pending_faults == 3
    got = [rerank(server, DOCS) for _ in range(4)]
    assert [r.status_code for r in got] == [500, 500, 503, 200]
    assert (got[2].code, got[2].message) == ("ModelUnavailable", "busy")
    assert server.pending_faults == 0


def test_drop_next_twice_raises_connection_error(server: DashScopeServer) -> None:
    """Two drops defeat the SDK's single retry: it raises requests ConnectionError."""
    server.drop_next(times=2)
    with pytest.raises(requests.exceptions.ConnectionError):
        rerank(server, DOCS)
    assert server.stats.errors_by_status == {0: 2}


def test_drop_next_once_is_retried_by_sdk(server: DashScopeServer) -> None:
    """One drop is hidden by the SDK's own retry; the server saw two requests."""
    server.drop_next()
    assert rerank(server, DOCS).status_code == 200
    stats = server.stats
    assert (stats.requests, stats.ok_requests, stats.errors_by_status) == (2, 1, {0: 1})
    assert [e.fault for e in server.requests_log] == ["drop", None]


def test_delay_next_causes_client_timeout(server: DashScopeServer) -> None:
    """delay_next beyond request_timeout makes the SDK raise requests ReadTimeout."""
    server.delay_next(1.5)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        rerank(server, DOCS, request_timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert rerank(server, DOCS, request_timeout=2).status_code == 200


def test_delay_next_answers_late_but_normally(server: DashScopeServer) -> None:
    """A delayed request is answered normally after the delay."""
    server.delay_next(0.2)
    started = time.monotonic()
    assert rerank(server, DOCS).status_code == 200
    assert time.monotonic() - started >= 0.2
    assert server.requests_log[-1].fault == "delay"


@pytest.mark.parametrize("kind", sorted(MALFORM_KINDS))
def test_malform_kinds_are_observable(server: DashScopeServer, kind: str) -> None:
    """Each malform kind yields a wrong 200 that the caller can detect."""
    server.malform_next(kind)
    n = len(DOCS)
    if kind in ("missing_output", "missing_score"):
        with pytest.raises(TypeError):  # the SDK itself trips over these
            rerank(server, DOCS)
    elif kind == "not_json":
        with pytest.raises(ValueError, match="Expecting value"):
            rerank(server, DOCS)
    else:
        resp = rerank(server, DOCS)
        assert resp.status_code == 200
        results = resp.output.results
        if kind == "index_out_of_range":
            assert any(r.index >= n for r in results)
        elif kind == "nan_score":
            assert any(math.isnan(r.relevance_score) for r in results)
        else:
            assert len(results) == n - 1
    assert server.requests_log[-1].fault == f"malform:{kind}"
    assert rerank(server, DOCS).status_code == 200


def test_malform_wire_shapes(server: DashScopeServer) -> None:
    """missing_output drops 'output'; missing_score drops one relevance_score."""
    server.malform_next("missing_output")
    server.malform_next("missing_score")
    _, _, raw = post(server, body())
    assert set(json.loads(raw)) == {"usage", "request_id"}
    _, _, raw = post(server, body())
    results = json.loads(raw)["output"]["results"]
    assert sum("relevance_score" not in r for r in results) == 1


def test_fault_argument_validation(server: DashScopeServer) -> None:
    """Invalid fault arguments raise ValueError."""
    with pytest.raises(ValueError, match="status"):
        server.fail_next(200)
    with pytest.raises(ValueError, match="times"):
        server.drop_next(times=0)
    with pytest.raises(ValueError, match="malform kind"):
        server.malform_next("garbled")
    with pytest.raises(ValueError, match="seconds"):
        server.delay_next(-1)
    assert server.pending_faults == 0


# --- stats, log, lifecycle ---------------------------------------------------------------------


def test_stats_counters_and_reset(server: DashScopeServer) -> None:
    """stats counts requests, successes, documents, billed tokens and errors by status."""
    ok = rerank(server, DOCS[:3])
    rerank(server, DOCS, api_key="nope")
    server.fail_next(429)
    rerank(server, DOCS)
    server.drop_next(times=2)
    with pytest.raises(requests.exceptions.ConnectionError):
        rerank(server, DOCS)
    stats = server.stats
    assert stats.requests == 5
    assert stats.ok_requests == 1
    assert stats.documents == 3
    assert stats.tokens == ok.usage.total_tokens
    assert stats.errors_by_status == {401: 1, 429: 1, 0: 2}
    assert len(server.requests_log) == 5
    server.reset_stats()
    assert server.stats.requests == 0
    assert server.stats.errors_by_status == {}
    assert server.requests_log == []


def test_requests_log_records_fields(server: DashScopeServer) -> None:
    """The request log records the request's fields, the outcome and a key fingerprint."""
    resp = rerank(server, DOCS[:2], top_n=1, instruct="be brief", return_documents=True)
    entry = server.requests_log[-1]
    assert entry.path == RERANK_PATH
    assert (entry.model, entry.query, entry.documents) == (MODEL, QUERY, tuple(DOCS[:2]))
    assert (entry.top_n, entry.instruct, entry.return_documents) == (1, "be brief", True)
    assert (entry.status, entry.code, entry.fault) == (200, None, None)
    assert entry.request_id == resp.request_id
    assert entry.total_tokens == resp.usage.total_tokens
    assert entry.api_key_fingerprint == hashlib.sha256(KEY.encode()).hexdigest()[:8]


def test_concurrent_requests_run_in_parallel() -> None:
    """With latency, concurrent SDK calls are in flight at the same time."""
    with DashScopeServer(latency=0.2) as srv:
        statuses: list[int] = []
        lock = threading.Lock()

        def call() -> None:
            status = rerank(srv, DOCS).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert statuses == [200] * 4
        assert srv.stats.max_in_flight >= 2


def test_latency_is_settable() -> None:
    """Setting the latency attribute delays later answers."""
    with DashScopeServer() as srv:
        srv.latency = 0.15
        started = time.monotonic()
        assert rerank(srv, DOCS).status_code == 200
        assert time.monotonic() - started >= 0.15


def test_latency_runs_from_arrival() -> None:
    """The latency is the service time from a request's arrival, the server's own work
    included: a request that arrived a whole latency ago is answered without waiting."""
    endpoint = Endpoint(
        limits=served_limits(None, None),
        key_digests=None,
        latency=30.0,
        max_body_bytes=1 << 20,
        log_limit=None,
    )
    replies: list[int] = []

    def respond() -> None:
        raw = json.dumps(body()).encode()
        reply = endpoint.respond(
            RERANK_PATH, raw, None, f"Bearer {KEY}", arrived=time.monotonic() - 30.0
        )
        replies.append(reply.status)

    thread = threading.Thread(target=respond, daemon=True)
    thread.start()
    thread.join(10)  # the old semantics would wait the whole 30 s
    endpoint.stopping.set()  # frees the thread if it is still waiting
    thread.join(10)
    assert replies == [200]


def test_delay_comes_on_top_of_latency() -> None:
    """delay_next adds to the latency instead of being absorbed by it."""
    with DashScopeServer(latency=0.1) as srv:
        srv.delay_next(0.2)
        started = time.monotonic()
        assert rerank(srv, DOCS).status_code == 200
        assert time.monotonic() - started >= 0.3
        assert srv.requests_log[-1].fault == "delay"


def test_lifecycle() -> None:
    """base_url needs a started server; servers start once; stop is idempotent."""
    srv = DashScopeServer()
    with pytest.raises(RuntimeError):
        _ = srv.base_url
    srv.start()
    try:
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/api/v1"
        with pytest.raises(RuntimeError):
            srv.start()
    finally:
        srv.stop()
    srv.stop()
    with pytest.raises(RuntimeError):
        srv.start()


def test_stop_is_prompt_with_a_request_waiting() -> None:
    """stop() wakes a delayed request, closes its connection and returns quickly."""
    srv = DashScopeServer()
    srv.start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(srv, body())
        except OSError as exc:  # the connection is closed without an answer
            errors.append(exc)

    srv.delay_next(30)
    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 2
    while srv.stats.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 1.0
    thread.join(2)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert srv.requests_log[-1].fault == "shutdown"
