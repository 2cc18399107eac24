"""Cache warming: score (query, documents) pairs from a JSONL log before traffic arrives.

Each input line is one JSON object::

    {"query": "how do I cache reranks", "documents": ["text", {"id": "d2", "text": "..."}],
     "model": "gte-rerank-v2", "instruct": "..."}

``model`` and ``instruct`` are optional (the defaults passed to :func:`warm` apply); object
documents take their text from ``field`` and may carry an ``id`` (ignored). Documents are
prepared exactly as :class:`QwenReRanker` prepares them, so a warmed pair is a hit when the
same query and text are reranked later.

:func:`warm` streams: it holds at most ``2 * concurrency`` lines at a time, so memory does
not grow with the file. It yields an event per line as it completes and a summary at the
end; progress display belongs to the caller (the CLI draws a bar from these events).
Interrupted runs lose nothing: every completed request is already stored, and a re-run
finds those pairs cached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from .base import DEFAULT_MODEL
from .cached import CachedReRanker
from .client.core import DEFAULT_BASE_URL
from .client.retry import RetryPolicy
from .errors import ConfigurationError
from .keys import KeyBuilder, scorer_id
from .planning import estimate_tokens, limits_for, prepare_text
from .pricing import estimate_cost
from .ratelimit import RateLimiter
from .reranker import QwenReRanker
from .stores.protocols import Purpose, ScoreStore
from .stores.stats import CacheStats

__all__ = [
    "InvalidLineError",
    "LineSkipped",
    "LineWarmed",
    "WarmEvent",
    "WarmRequest",
    "WarmSummary",
    "parse_line",
    "warm",
]


class InvalidLineError(ConfigurationError):
    """An input line is not a valid warming request.

    Attributes:
        line: the 1-based line number.
        problem: what is wrong with it.
    """

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class WarmRequest:
    """One parsed input line: a query and the exact texts to score."""

    line: int
    query: str
    texts: tuple[str, ...]
    model: str
    instruct: str | None
    without_text: int = 0
    #: Other keys of the object documents without text in ``field``: where it may be instead.
    fields_found: tuple[str, ...] = ()


@dataclass(frozen=True)
class LineWarmed:
    """A line is done: how many of its pairs were cached already and how many were scored.

    In a dry run, ``scored`` counts the pairs that *would* be sent, and ``repeated`` the
    pairs not in the cache that an earlier line already has (they would be sent once). In a
    real run an earlier line has stored them by then, so they count as ``cached``.
    """

    line: int
    pairs: int
    cached: int
    scored: int
    requests: int
    tokens: int
    repeated: int = 0


@dataclass(frozen=True)
class LineSkipped:
    """An invalid line was skipped (``skip_invalid=True``)."""

    line: int
    problem: str


@dataclass(frozen=True)
class WarmSummary:
    """The totals of a warming run (the last event).

    Attributes:
        lines_read: lines read from the input, blank and invalid ones included.
        lines_skipped: invalid lines skipped.
        pairs_seen: unique (query, document) pairs per line, summed.
        already_cached: pairs found in the cache (in a real run, pairs an earlier line of
            the same input stored count too).
        repeated_in_input: (dry run) pairs not in the cache that an earlier line of the
            input already has: duplicates within the input, which would be sent once.
        scored: pairs scored by DashScope (in a dry run: pairs that would be sent).
        api_requests: DashScope requests made.
        tokens_billed: tokens DashScope billed.
        documents_without_text: documents skipped for having no text in ``field``.
        elapsed: seconds the run took.
        dry_run: whether nothing was sent.
        estimated_tokens: (dry run) estimated tokens of the pairs that would be sent.
        estimated_cost: (dry run) estimated list price in CNY by model (None when unknown).
        fields_found: the other keys of object documents without text in ``field``
            (sorted, at most 20): where the text may be instead.
    """

    lines_read: int = 0
    lines_skipped: int = 0
    pairs_seen: int = 0
    already_cached: int = 0
    scored: int = 0
    api_requests: int = 0
    tokens_billed: int = 0
    documents_without_text: int = 0
    elapsed: float = 0.0
    dry_run: bool = False
    estimated_tokens: int = 0
    estimated_cost: dict[str, float | None] = field(default_factory=dict)
    repeated_in_input: int = 0
    fields_found: tuple[str, ...] = ()


#: At most this many field names are collected for :attr:`WarmSummary.fields_found`.
_MAX_FIELDS_FOUND = 20

WarmEvent = LineWarmed | LineSkipped | WarmSummary


def parse_line(
    raw: str | bytes,
    line: int,
    *,
    field: str = "text",
    model: str = DEFAULT_MODEL,
    instruct: str | None = None,
) -> WarmRequest | None:
    """Parse one JSONL line into a :class:`WarmRequest`; None for a blank line.

    Raises:
        InvalidLineError: naming the line and the problem.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidLineError(line, "not valid UTF-8") from None
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise InvalidLineError(line, f"not valid JSON ({problem})") from None
    if not isinstance(obj, dict):
        raise InvalidLineError(line, f"expected a JSON object, got {type(obj).__name__}")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidLineError(line, "'query' must be a non-empty string")
    line_model = obj.get("model", model)
    if not isinstance(line_model, str) or not line_model.strip():
        raise InvalidLineError(line, "'model' must be a non-empty string")
    line_instruct = obj.get("instruct", instruct)
    if line_instruct is not None and (
        not isinstance(line_instruct, str) or not line_instruct.strip()
    ):
        raise InvalidLineError(line, "'instruct' must be a non-empty string")
    documents = obj.get("documents")
    if not isinstance(documents, list):
        raise InvalidLineError(line, "'documents' must be a list")
    limits = limits_for(line_model)
    texts: dict[str, None] = {}
    without_text = 0
    fields_found: set[str] = set()
    for position, doc in enumerate(documents):
        if isinstance(doc, str):
            value: Any = doc
        elif isinstance(doc, dict):
            value = doc.get(field)
        else:
            raise InvalidLineError(line, f"documents[{position}] must be a string or an object")
        text = prepare_text(value, limits)
        if text is None:
            without_text += 1
            if isinstance(doc, dict) and len(fields_found) < _MAX_FIELDS_FOUND:
                fields_found.update(str(k) for k in list(doc)[:_MAX_FIELDS_FOUND] if k != field)
        else:
            texts.setdefault(text)
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidLineError(line, "'query' contains lone surrogates") from None
    return WarmRequest(
        line,
        query,
        tuple(texts),
        line_model,
        line_instruct,
        without_text,
        tuple(sorted(fields_found)[:_MAX_FIELDS_FOUND]),
    )


class _Warming:
    """The store as warming uses it: lookups and usage are counted as warming's.

    Warming's lookups are not the applications' hits and misses, and its "already cached"
    pairs saved nothing, so they are counted apart (``stats().warm``); what it is billed
    still counts in the totals. A wrapper, so the caching layer stays unaware of warming.
    """

    def __init__(self, store: ScoreStore) -> None:
        self._store = store

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        return self._store.get_many(keys)

    def put_many(
        self,
        scores: Mapping[str, float],
        *,
        model: str,
        api_requests: int = 0,
        documents_sent: int = 0,
        tokens_billed: int = 0,
        purpose: Purpose = "warm",
    ) -> bool:
        del purpose  # everything written while warming is warming's
        return self._store.put_many(
            scores,
            model=model,
            api_requests=api_requests,
            documents_sent=documents_sent,
            tokens_billed=tokens_billed,
            purpose="warm",
        )

    def record_lookup(
        self, model: str, *, hits: int, misses: int, purpose: Purpose = "warm"
    ) -> None:
        del purpose
        self._store.record_lookup(model, hits=hits, misses=misses, purpose="warm")

    def record_fallback(self, model: str) -> None:
        self._store.record_fallback(model)

    def get_stale_many(self, keys: Iterable[str]) -> dict[str, float]:
        return self._store.get_stale_many(keys)

    def record_stale(self, model: str, served: int) -> None:
        self._store.record_stale(model, served)

    def stats(self) -> CacheStats:
        return self._store.stats()

    def close(self) -> None:
        """Leave the store open: whoever passed it to :func:`warm` closes it."""


def warm(
    source: Iterable[str | bytes],
    cache: ScoreStore,
    *,
    model: str = DEFAULT_MODEL,
    instruct: str | None = None,
    field: str = "text",
    api_key: str | None = None,
    base_url: str | None = None,
    concurrency: int = 4,
    max_rpm: float | None = None,
    dry_run: bool = False,
    skip_invalid: bool = False,
    retry: RetryPolicy | None = None,
    timeout: float = 30.0,
) -> Iterator[WarmEvent]:
    """Warm ``cache`` from JSONL lines; yield an event per line and a summary last.

    Args:
        source: the input lines (a file opened in binary or text mode, or any iterable).
        cache: the score store to fill.
        model: the model for lines that name none.
        instruct: the instruct for lines that name none.
        field: where object documents keep their text.
        api_key: the DashScope key (default ``DASHSCOPE_API_KEY``; not needed for a dry run).
        base_url: the DashScope endpoint (default ``DASHSCOPE_HTTP_BASE_URL``, else Beijing).
        concurrency: requests in flight at once.
        max_rpm: the most requests started per minute, retries included.
        dry_run: send nothing; report what would be sent, with estimated tokens and cost.
        skip_invalid: report invalid lines and go on, instead of stopping at the first.
        retry: the retry policy of each request.
        timeout: seconds to wait for one HTTP response.

    Raises:
        InvalidLineError: a line is invalid and ``skip_invalid`` is false. Lines before it
            are completed (and their scores kept) before this is raised.
        DashScopeError: a request failed after its retries; completed lines are kept.
        ConfigurationError: no API key (unless ``dry_run``), or bad arguments.
    """
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1")
    if dry_run:
        # Keys hold who scores: the endpoint the real run would use, resolved the same way.
        url = base_url or os.environ.get("DASHSCOPE_HTTP_BASE_URL") or DEFAULT_BASE_URL
        yield from _dry_run(
            source,
            cache,
            model=model,
            instruct=instruct,
            field=field,
            skip_invalid=skip_invalid,
            scorer=scorer_id(url),
        )
        return
    limiter = RateLimiter(max_rpm) if max_rpm is not None else None
    warming = _Warming(cache)
    bases: dict[tuple[str, str | None], QwenReRanker] = {}

    def reranker_for(request: WarmRequest) -> CachedReRanker:
        base = bases.get((request.model, request.instruct))
        if base is None:
            base = bases[(request.model, request.instruct)] = QwenReRanker(
                "warm",
                rerank_field=field,
                model=request.model,
                api_key=api_key,
                instruct=request.instruct,
                base_url=base_url,
                timeout=timeout,
                retry=retry,
                max_concurrency=1,
                max_rpm=limiter,
            )
        return CachedReRanker(base.with_query(request.query), warming)

    def run(request: WarmRequest, reranker: CachedReRanker) -> LineWarmed:
        result = reranker.score_texts(request.texts)
        scored = sum(len(batch.texts) for batch in result.batches)
        return LineWarmed(
            line=request.line,
            pairs=len(request.texts),
            cached=len(request.texts) - scored,
            scored=scored,
            requests=len(result.batches),
            tokens=result.total_tokens,
        )

    totals = _Totals()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="rerank-cache-warm")
    running: set[Future[LineWarmed]] = set()
    try:
        stop: InvalidLineError | None = None
        for request_or_skip in _requests(source, field, model, instruct, totals):
            if isinstance(request_or_skip, InvalidLineError):
                if not skip_invalid:
                    stop = request_or_skip
                    break
                totals.bump(lines_skipped=1)
                yield LineSkipped(request_or_skip.line, request_or_skip.problem)
                continue
            request = request_or_skip
            if not request.texts:
                yield totals.add(LineWarmed(request.line, 0, 0, 0, 0, 0))
                continue
            running.add(pool.submit(run, request, reranker_for(request)))
            while len(running) >= 2 * concurrency:
                yield from _drain(running, totals, FIRST_COMPLETED)
        while running:
            yield from _drain(running, totals, FIRST_COMPLETED)
        if stop is not None:
            raise stop
        yield totals.summary()
    finally:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _Totals:
    """The running totals of a warming run (a :class:`WarmSummary` being filled in)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.so_far = WarmSummary()

    def bump(self, **deltas: int) -> None:
        self.so_far = dataclasses.replace(
            self.so_far, **{name: getattr(self.so_far, name) + n for name, n in deltas.items()}
        )

    def add(self, event: LineWarmed) -> LineWarmed:
        self.bump(
            pairs_seen=event.pairs,
            already_cached=event.cached,
            scored=event.scored,
            api_requests=event.requests,
            tokens_billed=event.tokens,
            repeated_in_input=event.repeated,
        )
        return event

    def note_fields(self, names: tuple[str, ...]) -> None:
        known = self.so_far.fields_found
        if names and len(known) < _MAX_FIELDS_FOUND and not set(names) <= set(known):
            merged = tuple(sorted({*known, *names})[:_MAX_FIELDS_FOUND])
            self.so_far = dataclasses.replace(self.so_far, fields_found=merged)

    def summary(self, **extra: Any) -> WarmSummary:
        return dataclasses.replace(self.so_far, elapsed=time.monotonic() - self.started, **extra)


def _requests(
    source: Iterable[str | bytes],
    field: str,
    model: str,
    instruct: str | None,
    totals: _Totals,
) -> Iterator[WarmRequest | InvalidLineError]:
    for number, raw in enumerate(source, start=1):
        totals.so_far = dataclasses.replace(totals.so_far, lines_read=number)
        try:
            request = parse_line(raw, number, field=field, model=model, instruct=instruct)
        except InvalidLineError as exc:
            yield exc
            continue
        if request is not None:
            totals.bump(documents_without_text=request.without_text)
            totals.note_fields(request.fields_found)
            yield request


def _drain(running: set[Future[LineWarmed]], totals: _Totals, when: str) -> Iterator[LineWarmed]:
    done, _ = wait(running, return_when=when)
    for future in done:
        running.discard(future)
    # A failed line re-raises its error here; the lines that completed are already stored.
    for future in sorted(done, key=lambda f: f.exception() is None):
        yield totals.add(future.result())


def _dry_run(
    source: Iterable[str | bytes],
    cache: ScoreStore,
    *,
    model: str,
    instruct: str | None,
    field: str,
    skip_invalid: bool,
    scorer: str,
) -> Iterator[WarmEvent]:
    totals = _Totals()
    # Pairs this run would already have sent: a later line repeating one would hit.
    would_send: set[str] = set()
    tokens_by_model: dict[str, int] = {}
    for item in _requests(source, field, model, instruct, totals):
        if isinstance(item, InvalidLineError):
            if not skip_invalid:
                raise item
            totals.bump(lines_skipped=1)
            yield LineSkipped(item.line, item.problem)
            continue
        builder = KeyBuilder(item.model, item.instruct, item.query, scorer=scorer)
        keys = {builder.key(text): text for text in item.texts}
        found = cache.get_many(keys)
        not_cached = [k for k in keys if k not in found]
        missing = [k for k in not_cached if k not in would_send]
        would_send.update(missing)
        limits = limits_for(item.model)
        query_tokens = min(estimate_tokens(item.query), limits.max_item_tokens)
        tokens = sum(query_tokens + estimate_tokens(keys[k]) for k in missing)
        if missing and item.instruct:
            tokens += estimate_tokens(item.instruct)
        tokens_by_model[item.model] = tokens_by_model.get(item.model, 0) + tokens
        yield totals.add(
            LineWarmed(
                item.line,
                pairs=len(keys),
                cached=len(keys) - len(not_cached),
                scored=len(missing),
                requests=0,
                tokens=0,
                repeated=len(not_cached) - len(missing),
            )
        )
    yield totals.summary(
        dry_run=True,
        estimated_tokens=sum(tokens_by_model.values()),
        estimated_cost={m: estimate_cost(m, t) for m, t in sorted(tokens_by_model.items())},
    )
