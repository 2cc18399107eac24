"""The rerank endpoint itself: from a request body to the answer DashScope would give.

Internal to :mod:`rerank_cache.testing`. :class:`Endpoint` holds what every request needs
(accepted keys, limits, the fault queue, the counters, the latency) and is shared by the
HTTP handler threads; :func:`rerank` checks one request body and scores it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..wire_rules import documents_problem, missing_parameter, parameters_problem
from .faults import FaultQueue, apply_malform
from .limits import ModelLimits
from .records import Recorder
from .scoring import count_tokens, pair_scorer
from .wire import (
    INVALID_API_KEY,
    RERANK_PATH,
    ApiError,
    Reply,
    Seen,
    dropped_reply,
    error_reply,
    key_digest,
    not_found_reply,
    presented_key,
    seen_from,
)

__all__ = ["Endpoint", "rerank"]


class Endpoint:
    """Answers rerank requests; thread-safe.

    Args:
        limits: The models served, with their limits.
        key_digests: SHA-256 digests of the accepted keys; ``None`` accepts any key.
        latency: Seconds from a request's arrival to its answer (see :meth:`respond`).
        max_body_bytes: Largest accepted request body.
        log_limit: How many requests the log keeps; ``None`` keeps all.

    Attributes:
        latency: Seconds from a request's arrival to its answer (read per request).
        faults: The injected faults waiting for requests.
        recorder: The counters and the request log.
        stopping: Set when the server stops; cuts every wait short.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, ModelLimits],
        key_digests: frozenset[str] | None,
        latency: float,
        max_body_bytes: int,
        log_limit: int | None,
    ) -> None:
        self.limits = limits
        self.latency = latency
        self.max_body_bytes = max_body_bytes
        self.faults = FaultQueue()
        self.recorder = Recorder(log_limit)
        self.stopping = threading.Event()
        self._key_digests = key_digests

    def wait(self, seconds: float) -> bool:
        """Wait; False if the server started stopping meanwhile."""
        if seconds <= 0:
            return not self.stopping.is_set()
        return not self.stopping.wait(seconds)

    def respond(
        self,
        path: str,
        body: bytes | None,
        framing: ApiError | None,
        authorization: str | None,
        *,
        arrived: float,
    ) -> Reply:
        """Answer one POST ``latency`` seconds after it arrived, and record it.

        The latency is the service time, as a client of a remote service sees it: the
        work of answering (parsing, checking, scoring) is part of it, and only what is
        left of it is waited out. So concurrent requests are answered ``latency`` after
        their own arrival even though this process scores them one at a time, unless
        the scoring alone takes longer. An injected delay (:meth:`DashScopeServer.delay_next`)
        comes on top.

        Args:
            path: The URL path, without the query string.
            body: The request body; None when it was larger than ``max_body_bytes``.
            framing: Why the body could not be read at all (answered as is), or None.
            authorization: The ``Authorization`` header, if any.
            arrived: When the request arrived, on the ``time.monotonic()`` clock.
        """
        if framing is not None:
            reply, seen = error_reply(framing.status, framing.code, framing.message), Seen()
            reply.close = True
        elif path.rstrip("/") != RERANK_PATH:
            reply, seen = not_found_reply(), Seen()
        else:
            reply, seen = self.answer(body, authorization)
        left = self.latency - (time.monotonic() - arrived)
        if reply.status != 0 and not self.wait(max(left, 0.0) + reply.delay):
            reply = dropped_reply("shutdown", reply.request_id)
        self.recorder.record(path, seen, reply)
        return reply

    def answer(self, body: bytes | None, authorization: str | None) -> tuple[Reply, Seen]:
        """Answer a request to the rerank path: its fault if one applies, else DashScope's."""
        payload: object = None
        parse_error: str | None = None
        if body is not None:
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                parse_error = "The request body is not valid JSON."
        seen = seen_from(payload)
        fault = self.faults.take(seen.documents)
        key = presented_key(authorization)
        if key is not None:
            seen.fingerprint = key_digest(key)[:8]

        if fault is not None and fault.kind == "drop":
            return dropped_reply("drop"), seen
        if fault is not None and fault.kind == "fail":
            headers = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
            reply = error_reply(
                fault.status, fault.code or "", fault.message or "", headers=headers
            )
            reply.fault = "fail"
            return reply, seen
        if fault is not None and fault.kind == "body":
            request_id = str(uuid.uuid4())
            reply = Reply(status=fault.status, request_id=request_id, raw_body=fault.body)
            reply.fault = "body"
            return reply, seen
        try:
            if body is None:
                raise ApiError(413, "BadRequest.TooLarge", "Request entity too large.")
            if key is None or (
                self._key_digests is not None and key_digest(key) not in self._key_digests
            ):
                raise ApiError(401, "InvalidApiKey", INVALID_API_KEY)
            if parse_error is not None:
                raise _invalid(parse_error)
            reply, n_documents = rerank(payload, self.limits)
        except ApiError as error:
            reply = error_reply(error.status, error.code, error.message)
            if fault is not None:
                reply.fault = fault.label
                reply.delay = fault.seconds if fault.kind == "delay" else 0.0
            return reply, seen
        if fault is not None:
            reply.fault = fault.label
            if fault.kind == "delay":
                reply.delay = fault.seconds
            if fault.kind == "malform" and fault.malform is not None:
                apply_malform(reply, fault.malform, n_documents)
            if fault.kind == "trickle":
                reply.trickle = (fault.seconds, fault.chunk)
        return reply, seen


def _invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


def _missing(code: str, name: str) -> ApiError:
    return ApiError(400, code, missing_parameter(name))


def rerank(payload: object, limits: Mapping[str, ModelLimits]) -> tuple[Reply, int]:
    """Check a rerank request body as DashScope does, then score it.

    Returns:
        The 200 answer, and the number of documents scored.

    Raises:
        ApiError: With DashScope's status, code and message, for a request it refuses.
    """
    if not isinstance(payload, dict):
        raise _invalid("The request body must be a JSON object.")
    model = payload.get("model")
    if model is None or model == "":
        raise _missing("BadRequest.EmptyModel", "model")
    if not isinstance(model, str):
        raise _invalid("model should be a string.")
    model_limits = limits.get(model)
    if model_limits is None:
        raise ApiError(404, "ModelNotFound", "Model not exist.")
    inp = payload.get("input")
    if not isinstance(inp, dict):
        raise _missing("BadRequest.EmptyInput", "input")
    query = inp.get("query")
    if query is None or query == "":
        raise _missing("BadRequest.EmptyInput", "query")
    if not isinstance(query, str):
        raise _invalid("query should be a string.: input.query")
    documents = inp.get("documents")
    problem = documents_problem(
        documents,
        max_documents=model_limits.max_documents,
        max_item_chars=model_limits.max_item_chars,
        path="input.",
    )
    if problem is not None:
        raise _invalid(problem)
    assert isinstance(documents, list)  # checked just above
    params = payload.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _invalid("parameters should be an object.")
    problem = parameters_problem(params, path="parameters.")
    if problem is not None:
        raise _invalid(problem)
    top_n = params.get("top_n")
    return_documents = params.get("return_documents")
    instruct = params.get("instruct")
    if instruct is not None and not isinstance(instruct, str):
        raise _invalid("instruct should be a string.: parameters.instruct")

    item_max = model_limits.max_item_tokens
    n = len(documents)
    request_tokens = min(count_tokens(query), item_max) * n + sum(
        min(count_tokens(document), item_max) for document in documents
    )
    if request_tokens > model_limits.max_request_tokens:
        raise _invalid(
            f"Range of input length should be [1, {model_limits.max_request_tokens}], "
            f"but got {request_tokens}"
        )
    total_tokens = request_tokens + (count_tokens(instruct) if instruct is not None else 0)

    scores = list(map(pair_scorer(query, model=model, instruct=instruct), documents))
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    if top_n is not None:
        order = order[:top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    request_id = str(uuid.uuid4())
    reply = Reply(
        status=200,
        request_id=request_id,
        payload={
            "output": {"results": results},
            "usage": {"total_tokens": total_tokens},
            "request_id": request_id,
        },
        documents=n,
        total_tokens=total_tokens,
    )
    return reply, n
