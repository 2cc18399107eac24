"""`rerank-cache serve`: the real dashscope SDK, sync and async, through the proxy to the
local DashScope server. Each test pins what a client sees and what reaches upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dashscope
import pytest
from freezegun import freeze_time

from rerank_cache import RetryPolicy, ScoreCache, close_async_sessions
from rerank_cache.cli import main as cli_main
from rerank_cache.serve import (
    COMPATIBLE_PATH,
    NATIVE_PATH,
    AcceptedKeys,
    ProxyServer,
    ServeConfig,
    TokenSet,
    read_tokens,
)
from rerank_cache.testing import DashScopeServer

from .conftest import API_KEY
from .test_async import AsyncSleeps

OTHER_KEY = "sk-test-other-key-9876543210"
BAD_KEY = "sk-never-accepted-000000"
MODEL = "gte-rerank-v2"
QUERY = "how does a vector database cache rerank scores"
DOCS = [
    "A vector database stores embeddings for similarity search.",
    "Bread rises when yeast ferments the dough.",
    "A score cache saves repeated rerank calls to DashScope.",
    "Rerank scores depend on the query and the document.",
]
NEW_DOCS = ["Caching per pair means a new candidate costs one document.", DOCS[0]]


@pytest.fixture
def upstream() -> Iterator[DashScopeServer]:
    """The local DashScope server the proxy forwards to; it accepts two keys."""
    with DashScopeServer(api_keys=[API_KEY, OTHER_KEY]) as srv:
        yield srv


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ScoreCache]:
    """The proxy's score store."""
    with ScoreCache(tmp_path / "proxy-scores") as cache:
        yield cache


@pytest.fixture
def start_proxy(
    upstream: DashScopeServer, store: ScoreCache
) -> Iterator[Callable[..., ProxyServer]]:
    """Start a proxy on 127.0.0.1 with an ephemeral port; retries do not really sleep."""
    started: list[ProxyServer] = []

    def start(**settings: Any) -> ProxyServer:
        settings.setdefault("upstream", upstream.base_url)
        settings.setdefault(
            "retry", RetryPolicy(max_attempts=2, backoff_base=0.01, async_sleep=AsyncSleeps())
        )
        settings.setdefault("timeout", 20.0)
        proxy = ProxyServer(store, ServeConfig(**settings))
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(start_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    """A pass-through proxy in front of the local server."""
    return start_proxy()


def rerank(base: str, key: str = API_KEY, **kwargs: Any) -> Any:
    """One sync SDK call with everything passed per call (no SDK globals)."""
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("query", QUERY)
    kwargs.setdefault("documents", DOCS)
    return dashscope.TextReRank.call(api_key=key, base_address=base, **kwargs)


def arerank(base: str, key: str = API_KEY, **kwargs: Any) -> Any:
    """One async SDK call (AioTextReRank) on a fresh event loop."""
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("query", QUERY)
    kwargs.setdefault("documents", DOCS)

    async def go() -> Any:
        try:
            return await dashscope.AioTextReRank.call(api_key=key, base_address=base, **kwargs)
        finally:
            await close_async_sessions()

    return asyncio.run(go())


def results(response: Any) -> list[tuple[int, float, Any]]:
    """(index, score, document) of each result, as the SDK exposes them."""
    assert response.status_code == 200, (response.code, response.message)
    return [(r["index"], r["relevance_score"], r["document"]) for r in response.output.results]


def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST raw bytes or JSON; return the status and the JSON body, whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def get(url: str) -> tuple[int, str, str]:
    """GET: status, content type, text."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def native_body(**overrides: Any) -> dict[str, Any]:
    """A native request body as the SDK builds it."""
    body: dict[str, Any] = {
        "model": MODEL,
        "input": {"query": QUERY, "documents": DOCS},
        "parameters": {},
    }
    body.update(overrides)
    return body


def bearer(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sent_documents(upstream: DashScopeServer) -> list[str]:
    """Every document upstream answered 200 for, in order."""
    return [doc for r in upstream.requests_log if r.status == 200 for doc in r.documents]


# -- answers ---------------------------------------------------------------------------------


def test_sync_sdk_scores_match_upstream_and_usage_is_what_upstream_billed(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Through the proxy the SDK gets upstream's scores, sorted, and the tokens billed."""
    direct = rerank(upstream.base_url)
    upstream.reset_stats()
    via = rerank(proxy.base_url)
    assert results(via) == results(direct)
    scores = [score for _, score, _ in results(via)]
    assert scores == sorted(scores, reverse=True)
    assert via.usage.total_tokens == direct.usage.total_tokens == upstream.stats.tokens > 0
    assert via.request_id
    assert via.request_id != direct.request_id


def test_async_sdk_top_n_and_return_documents_match_upstream(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """AioTextReRank with top_n and return_documents gets exactly upstream's answer."""
    direct = arerank(upstream.base_url, top_n=2, return_documents=True)
    via = arerank(proxy.base_url, top_n=2, return_documents=True)
    assert results(via) == results(direct)
    assert len(results(via)) == 2
    assert all(doc == {"text": DOCS[i]} for i, _, doc in results(via))


def test_instruct_and_model_reach_upstream_and_key_the_cache(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """instruct and model are passed on and cached apart from other settings."""
    direct = rerank(upstream.base_url, model="qwen3-rerank", instruct="Find cache docs.")
    via = rerank(proxy.base_url, model="qwen3-rerank", instruct="Find cache docs.")
    assert results(via) == results(direct)
    assert upstream.requests_log[-1].instruct == "Find cache docs."
    other = rerank(proxy.base_url, model="qwen3-rerank")  # no instruct: another key
    assert other.usage.total_tokens > 0
    assert upstream.requests_log[-1].instruct is None


def test_repeated_request_sends_nothing_upstream(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """The second identical request is answered from the cache: nothing billed or sent."""
    first = rerank(proxy.base_url)
    before = upstream.stats.requests
    again = rerank(proxy.base_url)
    assert upstream.stats.requests == before
    assert again.usage.total_tokens == 0
    assert results(again) == results(first)


def test_overlapping_request_sends_only_the_new_texts(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Only documents the cache lacks go upstream; duplicates in a request go once."""
    rerank(proxy.base_url)
    before = len(upstream.requests_log)
    documents = [*NEW_DOCS, DOCS[2], NEW_DOCS[0]]
    via = rerank(proxy.base_url, documents=documents)
    assert [r.documents for r in upstream.requests_log[before:]] == [(NEW_DOCS[0],)]
    assert via.usage.total_tokens == upstream.requests_log[-1].total_tokens
    direct = rerank(upstream.base_url, documents=documents)
    assert results(via) == results(direct)
    assert sorted(i for i, _, _ in results(via)) == [0, 1, 2, 3]


def test_concurrent_identical_requests_share_one_upstream_call(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Eight clients asking at once for the same pairs: each pair is sent upstream once."""
    rerank(proxy.base_url, documents=["warm up the key"])
    upstream.latency = 0.2
    upstream.reset_stats()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: rerank(proxy.base_url), range(8)))
    assert len({tuple(results(a)) for a in answers}) == 1
    assert sorted(sent_documents(upstream)) == sorted(DOCS)


# -- credentials -----------------------------------------------------------------------------


def test_no_credential_is_401_without_contacting_upstream(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """No Authorization header (or not a Bearer one) gets 401 InvalidApiKey; upstream sees
    nothing."""
    rerank(proxy.base_url)
    upstream.reset_stats()
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        status, body = post(proxy.origin + NATIVE_PATH, native_body(), headers)
        assert status == 401
        assert body["code"] == "InvalidApiKey"
        assert body["request_id"]
    assert upstream.stats.requests == 0


def test_unknown_bad_key_is_never_answered_from_the_cache(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """A key upstream refuses gets 401 even when every pair is cached, after one
    one-document probe."""
    rerank(proxy.base_url)
    before = len(upstream.requests_log)
    refused = rerank(proxy.base_url, key=BAD_KEY)
    assert refused.status_code == 401
    assert refused.code == "InvalidApiKey"
    assert refused.output is None
    probes = upstream.requests_log[before:]
    assert [(len(p.documents), p.status) for p in probes] == [(1, 401)]
    assert BAD_KEY not in refused.message


def test_unknown_good_key_on_all_hit_request_pays_one_probe_then_is_trusted(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Another valid key on cached pairs: one tiny probe (billed to that request), then
    no more upstream calls for it."""
    first = rerank(proxy.base_url)
    before = len(upstream.requests_log)
    other = rerank(proxy.base_url, key=OTHER_KEY)
    assert results(other) == results(first)
    probe = upstream.requests_log[before:]
    assert [len(p.documents) for p in probe] == [1]
    assert other.usage.total_tokens == probe[0].total_tokens > 0
    again = rerank(proxy.base_url, key=OTHER_KEY)
    assert len(upstream.requests_log) == before + 1
    assert again.usage.total_tokens == 0


def test_key_refused_later_is_forgotten(upstream: DashScopeServer, proxy: ProxyServer) -> None:
    """A trusted key that upstream starts refusing (401) must prove itself again."""
    rerank(proxy.base_url)
    upstream.fail_next(401, code="InvalidApiKey")
    refused = rerank(proxy.base_url, documents=["a text nobody has cached"])
    assert refused.status_code == 401
    before = len(upstream.requests_log)
    again = rerank(proxy.base_url)  # all cached, but the key is no longer trusted
    assert again.status_code == 200
    assert [len(p.documents) for p in upstream.requests_log[before:]] == [1]


def test_accepted_keys_expire_and_are_kept_only_as_salted_digests() -> None:
    """Trust lasts ttl seconds; the registry holds no key text and differs per process."""
    with freeze_time("2026-01-01 00:00:00") as clock:
        keys = AcceptedKeys(ttl=60)
        keys.accept(API_KEY, MODEL)
        assert keys.known(API_KEY, MODEL)
        assert not keys.known(API_KEY, "qwen3-rerank")
        assert not keys.known(OTHER_KEY, MODEL)
        clock.tick(59)
        assert keys.known(API_KEY, MODEL)
        clock.tick(2)
        assert not keys.known(API_KEY, MODEL)
    held = repr(vars(keys))
    assert API_KEY not in held
    assert API_KEY not in repr(keys)
    one, two = AcceptedKeys(), AcceptedKeys()
    one.accept(API_KEY, MODEL)
    two.accept(API_KEY, MODEL)
    assert set(vars(one)["_until"]) != set(vars(two)["_until"])


def test_accepted_keys_are_bounded() -> None:
    """Past max_entries, the least recently accepted key is forgotten first."""
    keys = AcceptedKeys(max_entries=2)
    for key in ("k1", "k2", "k3"):
        keys.accept(key, MODEL)
    assert len(keys) == 2
    assert not keys.known("k1", MODEL)
    assert keys.known("k3", MODEL)


def test_server_key_mode_takes_tokens_and_calls_upstream_with_its_own_key(
    upstream: DashScopeServer, start_proxy: Callable[..., ProxyServer], tmp_path: Path
) -> None:
    """With a tokens file, clients present a token; upstream sees only the server's key."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# one per line\nteam-a-token\n\nteam-b-token\n")
    tokens = read_tokens(tokens_file)
    assert len(tokens) == 2
    assert "team-a-token" not in repr(tokens)
    proxy = start_proxy(tokens=tokens, server_key=OTHER_KEY)
    ok = rerank(proxy.base_url, key="team-b-token")
    assert results(ok) == results(rerank(upstream.base_url))
    fingerprints = {r.api_key_fingerprint for r in upstream.requests_log}
    assert len(fingerprints) == 2  # the server's key, then the test's direct call
    upstream.reset_stats()
    for key in (API_KEY, "team-a-token-x"):
        refused = rerank(proxy.base_url, key=key)
        assert refused.status_code == 401
        assert refused.code == "InvalidApiKey"
    assert upstream.stats.requests == 0


def test_token_set_needs_a_token() -> None:
    """An empty tokens file is a configuration mistake, not an open proxy."""
    with pytest.raises(ValueError, match="at least one"):
        TokenSet([])


# -- errors ----------------------------------------------------------------------------------

BAD_BODIES: dict[str, bytes | dict[str, Any]] = {
    "not JSON": b"{not json",
    "not an object": b"[1, 2]",
    "no model": native_body(model=""),
    "no input": {"model": MODEL, "parameters": {}},
    "empty query": native_body(input={"query": "", "documents": DOCS}),
    "empty documents": native_body(input={"query": QUERY, "documents": []}),
    "empty document": native_body(input={"query": QUERY, "documents": ["a", ""]}),
    "document not a string": native_body(input={"query": QUERY, "documents": ["a", 3]}),
    "over 500 documents": native_body(
        input={"query": QUERY, "documents": [f"d{i}" for i in range(501)]}
    ),
    "document too long": native_body(input={"query": QUERY, "documents": ["x" * 300_001]}),
    "top_n zero": native_body(parameters={"top_n": 0}),
    "return_documents not bool": native_body(parameters={"return_documents": "yes"}),
    "unknown model": native_body(model="no-such-rerank"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_gets_dashscopes_status_and_code(
    upstream: DashScopeServer, proxy: ProxyServer, case: str
) -> None:
    """Each bad request gets the same status and code from the proxy as from DashScope,
    in DashScope's error shape."""
    body = BAD_BODIES[case]
    want_status, want = post(upstream.url, body, bearer())
    status, got = post(proxy.origin + NATIVE_PATH, body, bearer())
    assert (status, got["code"]) == (want_status, want["code"])
    assert set(got) == {"request_id", "code", "message"}
    assert got["message"]


def test_bad_input_is_refused_before_upstream(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Input the proxy can judge itself never costs an upstream request."""
    for case, body in BAD_BODIES.items():
        if case != "unknown model":
            post(proxy.origin + NATIVE_PATH, body, bearer())
    assert upstream.stats.requests == 0


def test_too_large_body_is_413(upstream: DashScopeServer, start_proxy: Callable[..., Any]) -> None:
    """A body over the limit gets 413 BadRequest.TooLarge and never goes upstream."""
    proxy = start_proxy(max_body_bytes=2_000)
    status, body = post(proxy.origin + NATIVE_PATH, native_body(), bearer())
    assert status == 200
    big = native_body(input={"query": QUERY, "documents": ["y" * 3_000]})
    status, body = post(proxy.origin + NATIVE_PATH, big, bearer())
    assert (status, body["code"]) == (413, "BadRequest.TooLarge")
    assert upstream.stats.requests == 1


def test_document_limit_is_configurable(start_proxy: Callable[..., Any]) -> None:
    """--max-documents lowers the per-request limit, with DashScope's message."""
    proxy = start_proxy(max_documents=3)
    refused = rerank(proxy.base_url)
    assert refused.status_code == 400
    assert refused.message.endswith("larger than 3")


def test_unrouted_paths_get_dashscope_style_404_and_405(proxy: ProxyServer) -> None:
    """Unknown paths and wrong methods answer in DashScope's shape."""
    status, body = post(proxy.origin + "/api/v1/nothing", native_body(), bearer())
    assert (status, body["code"]) == (404, "NotFound")
    with pytest.raises(urllib.error.HTTPError) as info:
        get(proxy.origin + NATIVE_PATH)
    with info.value as error:
        assert error.code == 405
        assert json.loads(error.read())["code"] == "MethodNotAllowed"


# -- the OpenAI-style route ------------------------------------------------------------------


def test_compatible_route_shape_and_shared_cache(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """/compatible-api/v1/reranks answers {id, object, model, results, usage} with the
    native route's scores, from the same cache."""
    native = rerank(proxy.base_url, top_n=3)
    before = upstream.stats.requests
    flat = {"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 3}
    status, body = post(proxy.origin + COMPATIBLE_PATH, flat, bearer())
    assert status == 200
    assert set(body) == {"id", "object", "model", "results", "usage"}
    assert (body["object"], body["model"], body["usage"]) == ("list", MODEL, {"total_tokens": 0})
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == [
        (i, s) for i, s, _ in results(native)
    ]
    assert upstream.stats.requests == before


def test_compatible_route_errors_are_openai_shaped(proxy: ProxyServer) -> None:
    """Errors on the OpenAI-style route carry {error: {code, message, type}, request_id}."""
    status, body = post(
        proxy.origin + COMPATIBLE_PATH, {"model": MODEL, "query": QUERY, "documents": []}, bearer()
    )
    assert status == 400
    assert body["error"]["code"] == "InvalidParameter"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["request_id"]
    status, body = post(proxy.origin + COMPATIBLE_PATH, {"model": MODEL}, {})
    assert (status, body["error"]["code"]) == (401, "InvalidApiKey")


# -- outages ---------------------------------------------------------------------------------


def test_upstream_server_errors_after_retries_are_502(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Upstream 5xx on every attempt: 502 with upstream's code; nothing is cached."""
    upstream.fail_next(500, times=2)
    failed = rerank(proxy.base_url)
    assert (failed.status_code, failed.code) == (502, "InternalError")
    assert failed.output is None
    recovered = rerank(proxy.base_url)
    assert recovered.usage.total_tokens > 0  # it was not cached: it was sent again


def test_upstream_unreachable_is_503(upstream: DashScopeServer, proxy: ProxyServer) -> None:
    """Dropped connections on every attempt: 503 ServiceUnavailable."""
    upstream.drop_next(times=10)  # the SDK itself retries a dropped connection once
    failed = rerank(proxy.base_url)
    assert (failed.status_code, failed.code) == (503, "ServiceUnavailable")
    upstream.clear_faults()
    assert rerank(proxy.base_url).status_code == 200


def test_upstream_that_hangs_gives_504_not_a_hang(
    upstream: DashScopeServer, start_proxy: Callable[..., ProxyServer]
) -> None:
    """An upstream slower than the request timeout: 504 RequestTimeOut."""
    proxy = start_proxy(timeout=0.5, upstream_timeout=0.4)
    upstream.delay_next(30, times=3)
    failed = rerank(proxy.base_url, request_timeout=20)
    assert (failed.status_code, failed.code) == (504, "RequestTimeOut")


def test_throttling_after_retries_is_429_with_retry_after(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """Upstream kept throttling: the client gets 429 and upstream's Retry-After."""
    upstream.fail_next(429, times=2, retry_after=0.01)
    status, body = post(proxy.origin + NATIVE_PATH, native_body(), bearer())
    assert (status, body["code"]) == (429, "Throttling.RateQuota")


def test_upstream_4xx_verdicts_pass_through(upstream: DashScopeServer, proxy: ProxyServer) -> None:
    """403 from upstream reaches the client as 403 with its code."""
    upstream.fail_next(403, code="AccessDenied.Unpurchased")
    refused = rerank(proxy.base_url)
    assert (refused.status_code, refused.code) == (403, "AccessDenied.Unpurchased")


# -- health, metrics, logs -------------------------------------------------------------------


def test_healthz(proxy: ProxyServer) -> None:
    """GET /healthz answers 200 ok."""
    status, _, text = get(proxy.origin + "/healthz")
    assert (status, json.loads(text)) == (200, {"status": "ok"})


def metric(text: str, name: str) -> float:
    """The value of one exposition line ``name{labels} value``."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in\n{text}")


def test_metrics_expose_store_counters_and_requests(
    upstream: DashScopeServer, proxy: ProxyServer
) -> None:
    """/metrics: hits, misses, sent, billed, api requests, entries per model; request counts
    and latency histograms per route and status."""
    first = rerank(proxy.base_url)
    rerank(proxy.base_url)
    post(proxy.origin + NATIVE_PATH, native_body(), {})
    status, content_type, text = get(proxy.origin + "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    m = '{model="gte-rerank-v2"}'
    assert metric(text, f"rerank_cache_hits_total{m}") == len(DOCS)
    assert metric(text, f"rerank_cache_misses_total{m}") == len(DOCS)
    assert metric(text, f"rerank_cache_documents_sent_total{m}") == len(DOCS)
    assert metric(text, f"rerank_cache_tokens_billed_total{m}") == first.usage.total_tokens
    assert metric(text, f"rerank_cache_api_requests_total{m}") == 1
    assert metric(text, f"rerank_cache_entries{m}") == len(DOCS)
    assert "# TYPE rerank_cache_entries gauge" in text
    ok = '{route="native",status="200"}'
    assert metric(text, f"rerank_cache_proxy_requests_total{ok}") == 2
    assert metric(text, 'rerank_cache_proxy_requests_total{route="native",status="401"}') == 1
    assert metric(text, f"rerank_cache_proxy_request_duration_seconds_count{ok}") == 2
    inf = '{route="native",status="200",le="+Inf"}'
    assert metric(text, f"rerank_cache_proxy_request_duration_seconds_bucket{inf}") == 2
    assert "# TYPE rerank_cache_proxy_request_duration_seconds histogram" in text


def test_request_metrics_stay_keyed_by_route_not_by_request(proxy: ProxyServer) -> None:
    """Paths, query strings and keys never become labels: 40 different unknown requests make
    one series, so the metrics a long-running proxy keeps cannot grow with its traffic."""
    for i in range(40):
        status, _ = post(
            proxy.origin + f"/api/v1/nothing/{i}?n={i}", native_body(), bearer(f"k{i}")
        )
        assert status == 404
    assert dict(proxy.proxy.metrics.requests()) == {("other", "404"): 40}


def test_access_log_is_structured_and_has_no_secrets(
    proxy: ProxyServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One JSON line per request: route, status, documents, tokens; never the key."""
    with caplog.at_level(logging.INFO, logger="rerank_cache.serve.access"):
        rerank(proxy.base_url)
        rerank(proxy.base_url, key=BAD_KEY)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    assert [(r["route"], r["status"]) for r in lines] == [("native", 200), ("native", 401)]
    assert lines[0]["documents"] == len(DOCS)
    assert lines[0]["sent"] == len(DOCS)
    assert lines[0]["tokens"] > 0
    assert lines[0]["request_id"]
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert BAD_KEY not in record.getMessage()


def test_config_rejects_half_a_server_key_mode() -> None:
    """Tokens without a server key (or the reverse) is refused, not a silent open proxy."""
    with pytest.raises(ValueError, match="server-key mode"):
        ServeConfig(upstream="http://127.0.0.1:1/api/v1", tokens=TokenSet(["t"]))
    assert "sk-secret" not in repr(
        ServeConfig(upstream="http://x/api/v1", tokens=TokenSet(["t"]), server_key="sk-secret")
    )


# -- the command -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_command_drains_on_sigterm_and_flushes_counters(
    upstream: DashScopeServer, tmp_path: Path
) -> None:
    """`rerank-cache serve` answers, stops on SIGTERM with exit 0, and its counters are in
    the store afterwards."""
    port = _free_port()
    cache_dir = tmp_path / "served"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rerank_cache",
            "--cache-dir",
            str(cache_dir),
            "serve",
            "--port",
            str(port),
            "--upstream",
            upstream.base_url,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                get(url + "/healthz")
                break
            except OSError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
        answer = rerank(url + "/api/v1")
        assert len(results(answer)) == len(DOCS)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert API_KEY not in stderr
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [(r["route"], r["status"]) for r in access][-1] == ("native", 200)
    with ScoreCache(cache_dir) as store:
        stats = store.stats()
    assert (stats.misses, stats.documents_sent, stats.entries) == (len(DOCS),) * 3


def test_serve_appears_in_the_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`rerank-cache serve --help` lists the proxy's options."""
    assert cli_main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--upstream", "--tokens-file", "--timeout"):
        assert option in out
