"""The proxy's aiohttp application: routes, credentials, caching, errors, access log.

One store object serves every request, so the caching layer's single flight makes
concurrent requests for the same pairs share one upstream call. Each request gets its own
:class:`~rerank_cache.QwenReRanker` (cheap) carrying the caller's key, wrapped in a
:class:`~rerank_cache.CachedReRanker` on that store.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from rerank_cache import (
    APIError,
    AuthenticationError,
    CachedReRanker,
    ConfigurationError,
    DashScopeError,
    MalformedResponseError,
    QwenReRanker,
    RateLimitError,
    RequestTimeoutError,
    ScoreStore,
    TransportError,
    close_async_sessions,
    score_key,
)

from ..urls import redact_url
from .auth import AcceptedKeys, bearer, no_key_error
from .config import ServeConfig
from .metrics import CONTENT_TYPE, RequestMetrics, render_store_metrics
from .wire import (
    ProxyError,
    RerankRequest,
    compatible_error_body,
    compatible_response,
    native_error_body,
    native_response,
    parse_compatible,
    parse_json,
    parse_native,
    ranked,
)

__all__ = ["COMPATIBLE_PATH", "NATIVE_PATH", "Proxy"]

NATIVE_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"
COMPATIBLE_PATH = "/compatible-api/v1/reranks"

access_logger = logging.getLogger("rerank_cache.serve.access")
logger = logging.getLogger("rerank_cache.serve")

#: The cheapest request that proves a key works: one one-character document.
_PROBE = "a"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Outcome:
    """What the access log says about a request beyond its route and status."""

    request_id: str | None = None
    documents: int | None = None
    sent: int | None = None
    tokens: int | None = None


#: The outcome of the request being handled (the middleware sets it; the handlers fill it).
_outcome: contextvars.ContextVar[_Outcome] = contextvars.ContextVar("rerank_cache_serve_outcome")


class Proxy:
    """The caching DashScope proxy, as an aiohttp application.

    Args:
        store: the score store, shared by every request (the caller closes it).
        config: the proxy's settings.

    The store is not closed by the application: whoever opened it closes it after the
    server has drained (:func:`rerank_cache.serve.serve` does).
    """

    def __init__(self, store: ScoreStore, config: ServeConfig | None = None) -> None:
        self._store = store
        self._config = config or ServeConfig()
        self._retry = self._config.retry_policy
        self._keys = AcceptedKeys(ttl=self._config.key_ttl, max_entries=self._config.max_keys)
        self.metrics = RequestMetrics()

    def __repr__(self) -> str:
        return f"Proxy(upstream={redact_url(self._config.upstream)!r}, store={self._store!r})"

    @property
    def config(self) -> ServeConfig:
        """The proxy's settings."""
        return self._config

    def app(self) -> web.Application:
        """A new aiohttp application serving the proxy's routes."""
        app = web.Application(
            client_max_size=self._config.max_body_bytes, middlewares=[self._observe]
        )
        app.router.add_post(NATIVE_PATH, self._native, name="native")
        app.router.add_post(COMPATIBLE_PATH, self._compatible, name="compatible")
        app.router.add_get("/healthz", self._healthz, name="healthz")
        app.router.add_get("/metrics", self._metrics, name="metrics")
        app.router.add_route("*", "/{tail:.*}", self._unrouted, name="other")
        app.on_cleanup.append(_close_sessions)
        return app

    # -- routes --------------------------------------------------------------------------

    async def _native(self, request: web.Request) -> web.Response:
        return await self._rerank(
            request,
            parse_native,
            lambda results, tokens, request_id, _: native_response(results, tokens, request_id),
            native_error_body,
        )

    async def _compatible(self, request: web.Request) -> web.Response:
        return await self._rerank(
            request,
            parse_compatible,
            lambda results, tokens, request_id, parsed: compatible_response(
                results, tokens, request_id, parsed.model
            ),
            compatible_error_body,
        )

    async def _rerank(
        self,
        request: web.Request,
        parse: Callable[..., RerankRequest],
        answer: Callable[[list[dict[str, Any]], int, str, RerankRequest], dict[str, Any]],
        refuse: Callable[[ProxyError, str], dict[str, Any]],
    ) -> web.Response:
        """Both rerank routes: the same steps, each route's own shapes."""
        request_id = str(uuid.uuid4())
        _outcome.get().request_id = request_id
        try:
            key, trusted = self._credential(request)
            payload = parse_json(await self._body(request))
            parsed = parse(payload, max_documents=self._config.max_documents)
            results, tokens = await self._answer(parsed, key, trusted)
        except ProxyError as error:
            return _json(refuse(error, request_id), error.status, error.headers)
        return _json(answer(results, tokens, request_id, parsed))

    async def _healthz(self, request: web.Request) -> web.Response:
        del request
        return _json({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        del request
        stats = await asyncio.to_thread(self._store.stats)
        lines = render_store_metrics(stats) + self.metrics.render()
        return web.Response(
            body=("\n".join(lines) + "\n").encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def _unrouted(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        if request.path in (NATIVE_PATH, COMPATIBLE_PATH):
            error = ProxyError(405, "MethodNotAllowed", f"Use POST for {request.path}.")
        else:
            error = ProxyError(404, "NotFound", f"No route {request.path}.")
        return _json(native_error_body(error, request_id), error.status)

    # -- steps ---------------------------------------------------------------------------

    def _credential(self, request: web.Request) -> tuple[str, bool]:
        """The key to send upstream, and whether it is trusted without asking DashScope."""
        presented = bearer(request.headers.get("Authorization"))
        config = self._config
        if config.tokens is not None and config.server_key is not None:
            config.tokens.check(presented)
            return config.server_key, True
        if presented is None:
            raise no_key_error()
        return presented, False

    async def _body(self, request: web.Request) -> bytes:
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large()
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large() from None

    async def _answer(
        self, parsed: RerankRequest, key: str, trusted: bool
    ) -> tuple[list[dict[str, Any]], int]:
        """Score the request within the timeout; DashScope trouble becomes a ProxyError."""
        outcome = _outcome.get()
        outcome.documents = len(parsed.documents)
        try:
            scores, tokens, sent = await asyncio.wait_for(
                self._score(parsed, key, trusted), self._config.timeout
            )
        except asyncio.TimeoutError:
            raise ProxyError(
                504,
                "RequestTimeOut",
                f"DashScope did not answer within {self._config.timeout:g} s.",
            ) from None
        except DashScopeError as exc:
            raise _upstream_error(exc) from None
        except ConfigurationError as exc:
            raise ProxyError(400, "InvalidParameter", str(exc)) from None
        outcome.sent = sent
        outcome.tokens = tokens
        return ranked(parsed, scores), tokens

    async def _score(
        self, parsed: RerankRequest, key: str, trusted: bool
    ) -> tuple[dict[str, float], int, int]:
        """Scores by text, tokens billed upstream for this request, documents sent."""
        model = parsed.model
        reranker = CachedReRanker(
            self._reranker(parsed.query, model, key, parsed.instruct), self._store
        )
        texts = list(dict.fromkeys(parsed.documents))
        verified = trusted or self._keys.known(key, model)
        tokens = sent = 0
        if not verified:
            # A key DashScope never accepted is not answered from the cache: when every
            # pair is cached, ask DashScope about the key first, as cheaply as possible.
            scorer = reranker.scorer_id
            keys = [
                score_key(model, parsed.instruct, parsed.query, text, scorer=scorer)
                for text in texts
            ]
            found = await asyncio.to_thread(self._store.get_many, keys)
            if len(found) == len(keys):
                tokens += await self._verify(key, model)
                sent += 1
                verified = True
        try:
            result = await reranker.ascore_texts(texts)
        except AuthenticationError:
            if not trusted:
                self._keys.forget(key, model)
            raise
        tokens += result.total_tokens
        sent += sum(len(batch.texts) for batch in result.batches)
        if not verified:
            if result.batches:
                self._keys.accept(key, model)
            else:  # the misses were fetched by other requests' flights, not with this key
                tokens += await self._verify(key, model)
                sent += 1
        return result.scores, tokens, sent

    async def _verify(self, key: str, model: str) -> int:
        """Prove DashScope accepts ``key`` for ``model``; return the tokens it billed."""
        probe = self._reranker(_PROBE, model, key, None)
        try:
            result = await probe.ascore_texts([_PROBE])
        except AuthenticationError:
            self._keys.forget(key, model)
            raise
        self._keys.accept(key, model)
        # The probe was paid for: count it, and keep its score like any other.
        await asyncio.to_thread(
            self._store.put_many,
            {score_key(model, None, _PROBE, _PROBE, scorer=probe.scorer_id): result.scores[_PROBE]},
            model=model,
            api_requests=len(result.batches),
            documents_sent=1,
            tokens_billed=result.total_tokens,
        )
        return result.total_tokens

    def _reranker(self, query: str, model: str, key: str, instruct: str | None) -> QwenReRanker:
        config = self._config
        return QwenReRanker(
            query,
            rerank_field="text",
            model=model,
            api_key=key,
            instruct=instruct,
            base_url=config.upstream,
            timeout=config.upstream_timeout,
            retry=self._retry,
            max_concurrency=config.max_concurrency,
        )

    # -- every request -------------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request, and write one access-log line without secrets."""
        started = time.perf_counter()
        outcome = _Outcome()
        _outcome.set(outcome)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's convention)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = request.match_info.route.name or "other"
            self.metrics.observe(route, status, elapsed)
            _access(request, route, status, elapsed, outcome)


def _access(
    request: web.Request, route: str, status: int, elapsed: float, outcome: _Outcome
) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    record: dict[str, Any] = {
        "event": "request",
        "method": request.method,
        "path": request.path,  # never the query string or headers: they may carry keys
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "remote": request.remote,
    }
    record.update((name, value) for name, value in asdict(outcome).items() if value is not None)
    access_logger.info(json.dumps(record, sort_keys=True))


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _too_large() -> ProxyError:
    return ProxyError(413, "BadRequest.TooLarge", "Request entity too large.")


def _upstream_error(exc: DashScopeError) -> ProxyError:
    """What the client gets when DashScope failed (after the library's retries)."""
    message = str(exc)
    if isinstance(exc, RateLimitError):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = f"{exc.retry_after:g}"
        return ProxyError(429, exc.code or "Throttling", message, headers=headers)
    if isinstance(exc, APIError):
        if exc.status < 500:  # DashScope's own verdict on the request: passed on as is
            return ProxyError(exc.status, exc.code or "InvalidParameter", message)
        return ProxyError(502, exc.code or "InternalError", message)
    if isinstance(exc, RequestTimeoutError):
        return ProxyError(504, "RequestTimeOut", message)
    if isinstance(exc, TransportError):
        return ProxyError(503, "ServiceUnavailable", message)
    if isinstance(exc, MalformedResponseError):
        return ProxyError(502, "InternalError", message)
    return ProxyError(502, "InternalError", message)


async def _close_sessions(app: web.Application) -> None:
    del app
    await close_async_sessions()
