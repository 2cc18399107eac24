"""The DashScope edge under hostile answers, SDKs, keys and URLs (issue 13 items 1, 2, 5-7)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dashscope.api_entities.aio_session import close_shared_aio_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank_cache import CachedReRanker, MalformedResponseError, QwenReRanker, ScoreCache, score_key
from rerank_cache.testing import DashScopeServer

from .helpers import API_KEY, make_docs

#: Hypothesis shares one server and cache across examples: a fixed, small budget.
_FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[DashScopeServer]:
    """One server for a module's property tests (faults are cleared per example)."""
    with DashScopeServer() as srv:
        yield srv


def _body(score: object, tokens: object) -> dict[str, Any]:
    return {
        "request_id": "r-1",
        "output": {"results": [{"index": 0, "relevance_score": score}]},
        "usage": {"total_tokens": tokens},
    }


_UNHOLDABLE_SCORES = st.one_of(
    st.integers(min_value=2**1024, max_value=10**400),
    st.integers(max_value=-(2**1024), min_value=-(10**400)),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), True, "0.5", None, [0.5]]),
)
_UNHOLDABLE_TOKENS = st.one_of(
    st.integers(min_value=2**63, max_value=10**400),
    st.integers(max_value=-1, min_value=-(10**400)),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from([[1], {"n": 1}]),
)


@_FEW
@given(
    st.one_of(
        st.tuples(_UNHOLDABLE_SCORES, st.integers(min_value=0, max_value=100)),
        st.tuples(st.floats(0, 1), _UNHOLDABLE_TOKENS),
    )
)
def test_numbers_that_cannot_be_held_are_malformed(
    shared_server: DashScopeServer, tmp_path: Path, case: tuple[object, object]
) -> None:
    """A 200 whose score has no finite float, or whose token count no counter can hold, is
    MalformedResponseError; with fallback it falls back; nothing is stored; counters stay >= 0."""
    score, tokens = case
    shared_server.clear_faults()
    reranker = QwenReRanker(
        "q", rerank_field="content", api_key=API_KEY, base_url=shared_server.base_url
    )
    shared_server.respond_next(200, _body(score, tokens))
    with pytest.raises(MalformedResponseError, match="nothing was cached"):
        reranker.rerank([make_docs(1)])

    store = ScoreCache(tmp_path / f"s{abs(hash(repr(case)))}")
    with store:
        cached = CachedReRanker(
            QwenReRanker(
                "q",
                rerank_field="content",
                api_key=API_KEY,
                base_url=shared_server.base_url,
                on_error="fallback",
            ),
            store,
        )
        shared_server.respond_next(200, _body(score, tokens))
        docs = make_docs(1)
        assert [d.id for d in cached.rerank([docs])] == [d.id for d in docs]
        stats = store.stats()
        assert stats.entries == 0
        assert all(v >= 0 for v in stats.model_dump().values() if isinstance(v, int))
        assert cached.usage.total_tokens >= 0


# -- item 5: anything the SDK raises is ours ----------------------------------------------------


class _SdkOwnError(Exception):
    """Stands for an exception class a future SDK release might add."""


@pytest.mark.parametrize(
    "raised",
    [
        Exception("boom"),
        RuntimeError("event loop is closed"),
        _SdkOwnError("InvalidTask"),
        OSError("too many open files"),
        TypeError("call() got an unexpected keyword argument 'session'"),
        TypeError("call() missing 1 required positional argument: 'documents'"),
        TypeError("call() takes 2 positional arguments but 3 were given"),
        ArithmeticError("odd"),
    ],
    ids=lambda e: f"{type(e).__name__}:{e}"[:40],
)
def test_anything_the_sdk_raises_is_a_dashscope_error(raised: Exception) -> None:
    """Every exception out of the SDK call becomes a DashScopeError, so on_error applies."""
    from rerank_cache import DashScopeError
    from rerank_cache.client.responses import translate
    from rerank_cache.client.retry import RetryableError

    result = translate(raised, timeout=1.0, base_url="http://u:***@h/api/v1")
    error = result.error if isinstance(result, RetryableError) else result
    assert isinstance(error, DashScopeError)


@pytest.mark.parametrize(
    "message",
    [
        "TextReRank.call() got an unexpected keyword argument 'session'",
        "call() got an unexpected keyword argument 'session'",
        "call() missing 1 required positional argument: 'documents'",
        "call() missing 2 required keyword-only arguments: 'a' and 'b'",
        "call() got multiple values for argument 'model'",
    ],
)
def test_signature_mismatch_names_installed_and_supported_sdk(message: str) -> None:
    """A TypeError from a changed SDK signature says which SDK is installed and what is
    supported, and the supported range is the one pyproject.toml declares."""
    import importlib.metadata

    from rerank_cache import DashScopeError, MalformedResponseError
    from rerank_cache.client.responses import SUPPORTED_DASHSCOPE, translate

    error = translate(TypeError(message), timeout=1.0, base_url="http://h/api/v1")
    assert isinstance(error, DashScopeError)
    assert not isinstance(error, MalformedResponseError)
    assert importlib.metadata.version("dashscope") in str(error)
    assert f"dashscope{SUPPORTED_DASHSCOPE}" in str(error)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"dashscope{SUPPORTED_DASHSCOPE}"' in pyproject


# -- item 6: keys that cannot be sent, URLs with credentials ----------------------------------

_KEY_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
_UNSENDABLE = st.one_of(
    st.characters(min_codepoint=0x80),  # non-ASCII, accents and emoji included
    st.characters(max_codepoint=0x1F),  # control characters
    st.sampled_from([" ", "\t", "\x7f", "\u00a0", "\u2003"]),
)


@settings(max_examples=60, deadline=None)
@given(
    st.text(_KEY_CHARS, min_size=1, max_size=20),
    _UNSENDABLE,
    st.text(_KEY_CHARS, min_size=1, max_size=20),
)
def test_key_that_cannot_be_a_header_is_refused_at_build(head: str, bad: str, tail: str) -> None:
    """A key with a character no HTTP header can carry is a ConfigurationError when the
    reranker is built; the message holds neither the key nor a part of it."""
    from rerank_cache import ConfigurationError

    key = f"sk-{head}{bad}{tail}"
    with pytest.raises(ConfigurationError) as info:
        QwenReRanker("q", rerank_field="content", api_key=key, base_url="http://127.0.0.1:9/api/v1")
    message = str(info.value)
    assert key not in message
    assert f"sk-{head}" not in message


def _dead_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PASSWORDS = st.text(
    st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="
    ),
    min_size=6,
    max_size=24,
).map(lambda p: f"S3cr{p}")  # a prefix no message holds by chance


@settings(max_examples=10, deadline=None)
@given(_PASSWORDS)
def test_credentials_in_base_url_are_never_shown(password: str) -> None:
    """A password in base_url is in no error message, retry warning, repr or property."""
    import logging

    from rerank_cache import RetryPolicy, TransportError

    url = f"http://user:{password}@127.0.0.1:{_dead_port()}/api/v1"
    handler = _Collect()
    logger = logging.getLogger()  # the SDK's log lines too
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        reranker = QwenReRanker(
            "q",
            rerank_field="content",
            api_key=API_KEY,
            base_url=url,
            retry=RetryPolicy(max_attempts=2, sleep=lambda seconds: None),
        )
        with pytest.raises(TransportError) as info:
            reranker.rerank([make_docs(2)])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    shown = [str(info.value), repr(info.value), repr(reranker), reranker.base_url, *handler.lines]
    shown.append(repr(reranker._client))
    assert any("user:***@127.0.0.1" in text for text in shown)
    assert handler.lines, "the retry warning was logged"
    for text in shown:
        assert password not in text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/api/v1?token=S3cr3tToken",
        "https://user:S3cr3tToken@dashscope.aliyuncs.com/api/v1#frag",
        "dashscope.aliyuncs.com/api/v1",
        "ftp://dashscope.aliyuncs.com/api/v1",
        "http:///api/v1",
        "http://127.0.0.1:port/api/v1",
        "http://ho st:1/api/v1",
        "http://host\x00:1/api/v1",
        "https://dashscope.aliyuncs.com\\@evil.example/api/v1",
    ],
)
def test_a_base_url_requests_cannot_go_to_is_refused_at_build(url: str) -> None:
    """No scheme, another scheme, no host, a bad port, a query string or a fragment (the
    API's path would be appended after it): a ConfigurationError when the reranker is built,
    saying why, with no secret in it."""
    from rerank_cache import ConfigurationError

    with pytest.raises(ConfigurationError, match="base_url") as info:
        QwenReRanker("q", rerank_field="content", api_key=API_KEY, base_url=url)
    assert "S3cr3tToken" not in str(info.value)


def test_user_info_in_base_url_is_not_sent_sync_or_async(server: DashScopeServer) -> None:
    """A user:password in base_url is dropped before sending (DashScope takes the API key):
    the sync and the async path both reach the server, which sees the key, and nothing
    shows the password."""
    import hashlib

    host = server.base_url.removeprefix("http://")
    reranker = QwenReRanker(
        "q", rerank_field="content", api_key=API_KEY, base_url=f"http://user:S3cr3tPw@{host}"
    )
    assert len(reranker.rerank([make_docs(2)])) == 2

    async def arerank() -> list[Any]:
        try:
            return await reranker.arerank([make_docs(3)])
        finally:
            await close_shared_aio_session()  # no connection outlives the test

    assert len(asyncio.run(arerank())) == 3
    fingerprint = hashlib.sha256(API_KEY.encode()).hexdigest()[:8]
    assert [r.api_key_fingerprint for r in server.requests_log] == [fingerprint] * 2
    assert "S3cr3tPw" not in repr(reranker) + reranker.base_url


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # with any traceback


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["http", "https", "redis", "rediss"]),
    st.text(min_size=0, max_size=8),
    _PASSWORDS,
    st.text(min_size=0, max_size=12),
)
def test_redact_url_hides_any_password(scheme: str, user: str, password: str, rest: str) -> None:
    """Whatever the user name and the rest of the URL, the password never survives."""
    from urllib.parse import quote

    from rerank_cache.urls import redact_url

    url = f"{scheme}://{quote(user, safe='')}:{password}@host:1/{quote(rest)}"
    assert f":{password}@" not in redact_url(url)
    assert ":***@" in redact_url(url)


_SECRET_PARAMS = st.sampled_from(["token", "api_key", "password", "Auth", "secret", "X-Key"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.sampled_from(["http", "https", "redis", "rediss", "redis+cluster"]),
    st.booleans(),
    _PASSWORDS,
    st.from_regex(r"[a-z0-9.-]{1,15}(:[0-9]{1,5})?", fullmatch=True),
    _SECRET_PARAMS,
    _PASSWORDS,
)
def test_redact_url_hides_user_info_and_secret_query_values(
    scheme: str, with_user: bool, userinfo_secret: str, hostport: str, param: str, value: str
) -> None:
    """A bare user-info (``token@host``: a user name or a key, we cannot tell) and the value
    of any secret-looking query parameter never survive redaction."""
    from rerank_cache.urls import redact_url

    userinfo = f"app:{userinfo_secret}" if with_user else userinfo_secret
    url = f"{scheme}://{userinfo}@{hostport}/0?{param}={value}&db=1"
    shown = redact_url(url)
    assert userinfo_secret not in shown
    assert value not in shown
    assert "db=1" in shown


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=40) | st.from_regex(r"[a-z+]{1,8}://[^/]{0,20}@?[^/]{0,10}/.{0,10}"))
def test_any_text_as_a_url_is_redacted_and_scored_without_raising(text: str) -> None:
    """Whatever a base_url or store URL holds, showing it and keying by it never raise, and
    the scorer identity is one of the two shapes the key format allows."""
    import re

    from rerank_cache.keys import DASHSCOPE_SCORER, scorer_id
    from rerank_cache.urls import redact_url, url_secrets

    assert isinstance(redact_url(text), str)
    shown = redact_url(text)
    for secret in url_secrets(text):
        assert f":{secret}@" not in shown
    ident = scorer_id(text)
    assert ident == DASHSCOPE_SCORER or re.fullmatch(r"url:[0-9a-f]{16}", ident)


def test_a_body_missing_a_field_is_malformed_not_a_version_problem() -> None:
    """The SDK builds result objects from the body: a TypeError from their __init__ is a
    bad body (MalformedResponseError), never blamed on the SDK version."""
    from rerank_cache import MalformedResponseError
    from rerank_cache.client.responses import translate

    exc = TypeError("ReRankResult.__init__() missing 1 required positional argument: 'x'")
    assert isinstance(translate(exc, timeout=1.0, base_url="http://h"), MalformedResponseError)


# -- item 2: a slowly sent body is bounded by the timeout and the deadline ---------------------


def _trickled_call(server: DashScopeServer, **kwargs: Any) -> QwenReRanker:
    from rerank_cache import RetryPolicy

    # A 200 of ~150 bytes, one byte every 0.25 s: ~40 s when only each read is bounded.
    server.trickle_next(0.25, times=10)
    return QwenReRanker(
        "q",
        rerank_field="content",
        api_key=API_KEY,
        base_url=server.base_url,
        timeout=0.5,
        retry=RetryPolicy(deadline=1.5, sleep=lambda seconds: None),
        **kwargs,
    )


def test_trickled_body_is_bounded_sync(server: DashScopeServer) -> None:
    """The sync path gives up on a body that trickles in: RequestTimeoutError, never the
    scores of a response that outlived its timeout."""
    from rerank_cache import RequestTimeoutError

    with pytest.raises(RequestTimeoutError):
        _trickled_call(server).rerank([make_docs(1)])


@pytest.mark.asyncio
async def test_trickled_body_is_bounded_async(server: DashScopeServer) -> None:
    """The async twin gives up the same way."""
    from rerank_cache import RequestTimeoutError, close_async_sessions

    try:
        with pytest.raises(RequestTimeoutError):
            await _trickled_call(server).arerank([make_docs(1)])
    finally:
        await close_async_sessions()


def test_a_normal_body_still_arrives_through_the_bounded_adapter(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Bodies larger than one read (1,000 documents) and slow first bytes pass unharmed."""
    server.delay_next(0.2)
    docs = make_docs(1000, chars=30)
    assert len(make_reranker(timeout=5.0).rerank([docs], topn=1000)) == 1000


# -- item 7: a test server never answers for DashScope ------------------------------------------

_DASHSCOPE_HOSTS = st.sampled_from(["dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com"])


@settings(max_examples=50, deadline=None)
@given(
    _DASHSCOPE_HOSTS,
    st.sampled_from(["https", "HTTPS"]),
    st.booleans(),
    st.sampled_from(["", "/", "//"]),
    st.sampled_from(["", "user:pw@", "k:S3cr@"]),
)
def test_dashscope_regions_share_one_scorer(
    host: str, scheme: str, upper: bool, slash: str, creds: str
) -> None:
    """Every spelling of DashScope's own endpoints (case, port 443, trailing slash,
    credentials) is the one scorer "dashscope"."""
    from rerank_cache.keys import DASHSCOPE_SCORER, scorer_id

    shown = host.upper() if upper else host
    for port in ("", ":443"):
        assert scorer_id(f"{scheme}://{creds}{shown}{port}/api/v1{slash}") == DASHSCOPE_SCORER


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.integers(min_value=1, max_value=65535) | st.none(),
    st.from_regex(r"(/[a-z0-9]{1,6}){0,3}", fullmatch=True),
    _PASSWORDS,
)
def test_any_other_endpoint_is_its_own_scorer(
    scheme: str, host: str, port: int | None, path: str, password: str
) -> None:
    """Any other base URL is a scorer of its own: never DashScope's, the same whatever the
    credentials, different for another host, port or path, and holding no credentials."""
    from rerank_cache.keys import DASHSCOPE_SCORER, scorer_id

    netloc = host + (f":{port}" if port is not None else "")
    url = f"{scheme}://{netloc}{path}"
    if scheme == "https" and host in ("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com"):
        return
    ident = scorer_id(url)
    assert ident != DASHSCOPE_SCORER
    assert scorer_id(f"{scheme}://u:{password}@{netloc}{path}") == ident
    assert password not in ident
    assert scorer_id(f"{scheme}://{netloc}{path}/other") != ident
    assert scorer_id(f"{scheme}://x{netloc}{path}") != ident


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.integers(min_value=1, max_value=65535) | st.none(),
    st.from_regex(r"(/[a-zA-Z0-9]{1,6}){0,3}", fullmatch=True),
    st.tuples(
        st.booleans(),  # scheme in capitals
        st.booleans(),  # host in capitals
        st.booleans(),  # default port written out
        st.sampled_from(["", "/", "//"]),
        st.sampled_from(["", "u@", "u:S3cr-pw@"]),
        st.sampled_from(["", "?x=1", "#frag", "?token=t#f"]),
        st.sampled_from(["", " ", "\n"]),
    ),
)
def test_every_spelling_of_one_endpoint_is_one_scorer(
    scheme: str,
    host: str,
    port: int | None,
    path: str,
    spelling: tuple[bool, bool, bool, str, str, str, str],
) -> None:
    """Case of scheme and host, a written-out default port, trailing slashes, credentials,
    query, fragment and surrounding whitespace never change who scores; the path's case does."""
    from rerank_cache.keys import scorer_id

    upper_scheme, upper_host, write_port, slash, creds, tail, space = spelling
    default = {"http": 80, "https": 443}[scheme]
    plain_port = f":{port}" if port is not None else ""
    canonical = scorer_id(f"{scheme}://{host}{plain_port}{path}")
    shown_port = plain_port or (f":{default}" if write_port else "")
    spelled = (
        f"{space}{scheme.upper() if upper_scheme else scheme}://{creds}"
        f"{host.upper() if upper_host else host}{shown_port}{path}{slash}{tail}{space}"
    )
    assert scorer_id(spelled) == canonical
    if path and path.lower() != path.upper():
        assert scorer_id(f"{scheme}://{host}{plain_port}{path.swapcase()}") != canonical


def test_scores_from_one_endpoint_are_never_served_for_another(
    server: DashScopeServer, tmp_path: Path
) -> None:
    """A store filled through one endpoint misses everything for another endpoint (and for
    DashScope's), and still hits for the first."""
    docs = make_docs(5)
    with ScoreCache(tmp_path / "scores") as store, DashScopeServer() as staging:

        def reranker(url: str) -> CachedReRanker:
            return QwenReRanker("q", rerank_field="content", api_key=API_KEY, base_url=url).cached(
                store
            )

        reranker(staging.base_url).rerank([docs])
        assert staging.stats.documents == 5
        reranker(server.base_url).rerank([docs])
        assert server.stats.documents == 5  # not served staging's scores
        reranker(staging.base_url).rerank([docs])
        assert staging.stats.documents == 5  # its own scores still hit
        real = reranker("https://dashscope-intl.aliyuncs.com/api/v1")
        assert real.scorer_id == "dashscope"
        assert not store.get_many(
            [
                score_key(real.model, None, "q", d.field("content"), scorer=real.scorer_id)
                for d in docs
            ]
        )
