"""A local, DashScope-compatible TextReRank server for your own tests.

:class:`DashScopeServer` speaks the wire format of DashScope's native rerank endpoint
(``POST {base}/services/rerank/text-rerank/text-rerank``) on ``127.0.0.1`` with a random port,
so the real ``dashscope`` SDK (or any HTTP client) can be exercised without network access,
without an API key and without paying for tokens. It enforces DashScope's documented limits
with DashScope's error messages, bills ``usage.total_tokens`` with a deterministic stand-in
tokenizer (:func:`count_tokens`), scores pairs with a deterministic, pointwise relevance
function (:func:`score`), and can inject faults: HTTP errors (with ``Retry-After``), dropped
connections, slow answers and malformed 200 responses.

It uses the standard library only, and every request runs on its own thread, so concurrent
clients are served in parallel.

Example:
    .. code-block:: python

        import dashscope
        from rerank_cache.testing import DashScopeServer

        with DashScopeServer(api_keys=["sk-test"]) as server:
            resp = dashscope.TextReRank.call(
                model="gte-rerank-v2",
                query="what is a vector database",
                documents=["a vector database stores embeddings", "bananas are yellow"],
                api_key="sk-test",
                base_address=server.base_url,  # pass per call; never mutate dashscope globals
            )
            assert resp.status_code == 200
            assert resp.output.results[0].index == 0

            server.fail_next(429, retry_after=1.5)  # the next request is throttled
            resp = dashscope.TextReRank.call(
                model="gte-rerank-v2", query="q", documents=["d"],
                api_key="sk-test", base_address=server.base_url,
            )
            assert resp.status_code == 429 and resp.headers["Retry-After"] == "1.5"
            assert server.stats.requests == 2

    The SDK reads ``DASHSCOPE_HTTP_BASE_URL`` once, at import, so pass
    ``base_address=server.base_url`` on every call rather than setting the variable in a test.

Note:
    The server never stores API keys: it keeps SHA-256 digests of the accepted keys, and the
    request log carries only a short fingerprint of the key a request presented. Keys never
    appear in responses, in ``repr`` output or in exception messages, and the per-request
    logging of :mod:`http.server` is switched off.

The names above are the public API. Inside, the package is split by concern:
:mod:`.scoring` (tokens and scores), :mod:`.limits` (the limits enforced, from
:data:`rerank_cache.planning.MODEL_LIMITS`), :mod:`.wire` (paths, replies, error bodies),
:mod:`.faults` (injected faults), :mod:`.records` (counters and request log),
:mod:`.endpoint` (checking and answering a request), :mod:`.httpd` (HTTP plumbing) and
:mod:`.server` (:class:`DashScopeServer`).
"""

from .faults import MALFORM_KINDS
from .limits import MAX_DOCUMENT_CHARS, MODEL_LIMITS, ModelLimits
from .records import RecordedRequest, ServerStats
from .scoring import count_tokens, score
from .server import DashScopeServer
from .wire import MAX_BODY_BYTES, RERANK_PATH

__all__ = [
    "MALFORM_KINDS",
    "MAX_BODY_BYTES",
    "MAX_DOCUMENT_CHARS",
    "MODEL_LIMITS",
    "RERANK_PATH",
    "DashScopeServer",
    "ModelLimits",
    "RecordedRequest",
    "ServerStats",
    "count_tokens",
    "score",
]
