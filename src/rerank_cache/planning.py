"""Pure planning: what to send to DashScope and how to split it. No I/O here.

The reranker (and the caching layer, and a future asyncio twin) share these steps:

1. :func:`collect` walks the caller's result lists, deduplicates by document id, reads the
   rerank field and prepares the exact text that will be sent (stripped, encodable, trimmed to
   what the model accepts).
2. :func:`plan_batches` splits the unique texts into requests that respect both the model's
   document limit and its per-request token budget
   (``query_tokens * n + Σ doc_tokens``, see the DashScope facts).
3. :func:`assemble` puts scores back on the caller's documents, sorts and cuts to ``topn``.

Token counts are *estimates*: DashScope does not publish its tokenizer. :func:`estimate_tokens`
is deliberately conservative (it over-counts English roughly twofold and counts every CJK
character as a token) so a planned request never exceeds the real budget.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Generic, TypeAlias, TypeVar

from .doc import read_doc
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_LIMITS",
    "MODEL_LIMITS",
    "Candidate",
    "Collected",
    "ModelLimits",
    "assemble",
    "collect",
    "estimate_tokens",
    "iter_batches",
    "iter_docs",
    "limits_for",
    "plan_batches",
    "prepare_text",
    "trim_to_tokens",
]

D = TypeVar("D")


@dataclass(frozen=True)
class ModelLimits:
    """What one rerank request may carry for a model.

    Attributes:
        max_documents: documents per request.
        max_item_tokens: tokens per query or document; DashScope truncates longer items, we
            trim them ourselves so the text we send (and cache under) is what gets scored.
        max_request_tokens: ``query_tokens * n + Σ doc_tokens`` per request.
        max_item_chars: characters per document beyond which DashScope answers 400
            (300,000 for gte-rerank-v2); longer texts are cut first.
    """

    max_documents: int
    max_item_tokens: int
    max_request_tokens: int
    max_item_chars: int = 300_000

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_item_tokens", "max_request_tokens", "max_item_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelLimits.{name} must be at least 1")


#: Documented limits per model (../shared/docs/dashscope-rerank-api.md). Where Alibaba's
#: documents disagree, the smaller number is used.
MODEL_LIMITS: Mapping[str, ModelLimits] = {
    "gte-rerank-v2": ModelLimits(500, 4_000, 30_000),
    "gte-rerank": ModelLimits(500, 4_000, 30_000),
    "qwen3-rerank": ModelLimits(500, 4_000, 30_000),
    "qwen3-vl-rerank": ModelLimits(100, 8_000, 120_000),
    # Request limits are not documented for this model: stay well inside what others accept.
    "qwen3.7-text-rerank": ModelLimits(100, 8_000, 30_000),
}

#: Limits assumed for a model this table does not know.
DEFAULT_LIMITS = ModelLimits(100, 4_000, 30_000)


def limits_for(model: str) -> ModelLimits:
    """Return the request limits for ``model`` (conservative defaults when unknown)."""
    return MODEL_LIMITS.get(model, DEFAULT_LIMITS)


# The definition, one match per unit: a run of ASCII letters, one digit, a run of ASCII
# whitespace, one ASCII symbol, one ASCII control character, or one non-ASCII character.
# estimate_tokens computes the same sum faster (a property test checks they agree).
_UNIT = re.compile(
    r"[A-Za-z]+|[0-9]|[\t\n\v\f\r ]+|[\x21-\x7e]|[\x00-\x08\x0e-\x1f\x7f]|[^\x00-\x7f]"
)
_LETTERS_PER_TOKEN = 3
_SPACES_PER_TOKEN = 4


def _unit_tokens(unit: str) -> int:
    first = unit[0]
    if first.isascii():
        if first.isalpha():
            return math.ceil(len(unit) / _LETTERS_PER_TOKEN)
        if first in "\t\n\v\f\r ":
            # A single space merges into the next word; anything more is tokens of its own.
            return 0 if unit == " " else math.ceil(len(unit) / _SPACES_PER_TOKEN)
        return 1  # a digit, a symbol, a control character
    return 2 if ord(first) > 0xFFFF else 1


# estimate_tokens classifies every character with one bytes.translate and then counts
# classes with C string methods: no Python object per unit (the regex walk built one per
# match and cost ~15 µs per 400-character document, the bulk of planning 2,000 of them).
# Classes: "a" an ASCII letter, " " a space, "w" other ASCII whitespace, "x" one token (a
# digit, a symbol, a control character, or "?" — which is also what the ASCII encoder
# writes for every non-ASCII character, each one token as well).


def _class_of(char: str) -> str:
    if char.isascii() and char.isalpha():
        return "a"
    if char in "\t\n\v\f\r ":
        return char if char == " " else "w"
    return "x"


_CLASS_OF = "".join(_class_of(chr(byte)) for byte in range(256)).encode("latin-1")
_SPACE_RUN = re.compile(r"[\t\n\v\f\r ]{2,}|[\t\n\v\f\r]")  # all but a lone space


def estimate_tokens(text: str) -> int:
    """Estimate, conservatively, how many tokens DashScope counts for ``text``.

    Runs of ASCII letters count one token per three letters; every digit, ASCII symbol,
    control character and non-ASCII character counts one token (two outside the Basic
    Multilingual Plane); a single space counts nothing (it merges into the next word) and
    any other run of ASCII whitespace one token per four characters. Real tokenizers merge
    more, so this over-counts; and since no text costs less than about one token per two
    characters, no request planned with it can grow past DashScope's body limit.

    Example:
        >>> estimate_tokens("what is a vector database")
        9
        >>> estimate_tokens("向量数据库")
        5
    """
    classes = text.encode("ascii", "replace").translate(_CLASS_OF)
    tokens = classes.count(b"x")
    if b"w" in classes or b"  " in classes:  # whitespace that costs tokens: rare in prose
        tokens += sum((len(run) + 3) // 4 for run in _SPACE_RUN.findall(text))
    # A run of n letters costs ceil(n / 3): each full three becomes "b", and what is left of
    # a run ("a" or "aa", never more) is one more token.
    classes = classes.replace(b"aaa", b"b")
    tokens += classes.count(b"b") + classes.count(b"a") - classes.count(b"aa")
    if not text.isascii():
        tokens += len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)  # astral
    return tokens


def trim_to_tokens(text: str, max_tokens: int) -> str:
    """Return the longest prefix of ``text`` whose :func:`estimate_tokens` is ``<= max_tokens``.

    Trailing whitespace of the cut is removed so the result is what :func:`prepare_text`
    would produce for it. The estimate grows about linearly along a text, so the walk over
    units starts from a proportional guess (at a lone space, where the estimate of a prefix
    and of the rest add up exactly) instead of from the first word.
    """
    total = estimate_tokens(text)
    if total <= max_tokens:
        return text
    start, used = 0, 0
    guess = len(text) * max_tokens // total * 9 // 10
    cut = text.rfind(" ", 0, guess)
    while cut > 0 and (text[cut - 1] in _WHITESPACE or text[cut + 1 : cut + 2] in _WHITESPACE):
        cut = text.rfind(" ", 0, cut)  # not a lone space: look further back
    if cut > 0:
        head = estimate_tokens(text[: cut + 1])
        if head <= max_tokens:
            start, used = cut + 1, head
    for match in _UNIT.finditer(text, start):
        unit = match.group()
        cost = _unit_tokens(unit)
        if used + cost > max_tokens:
            end = match.start()
            if unit[0].isascii() and unit[0].isalpha():
                end += max((max_tokens - used) * _LETTERS_PER_TOKEN, 0)
            return text[:end].rstrip()
        used += cost
    return text


_WHITESPACE = frozenset("\t\n\v\f\r ")


def prepare_text(value: Any, limits: ModelLimits) -> str | None:
    """Turn a field value into the exact text sent to DashScope, or None to skip it.

    Only a ``str`` that is non-empty after stripping is text. Anything else is skipped:
    a missing field (``None``, or ``{}`` from zvec's ``Doc.field()``), numbers, booleans,
    bytes, lists — sending ``str(value)`` would pay to score ``"{}"`` or ``"None"``. The text
    is stripped; characters that UTF-8 cannot encode (lone surrogates) become U+FFFD. Texts
    longer than the model accepts per item are trimmed, so the text sent is exactly the text
    scored and cached.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    ascii_only = text.isascii()
    if not ascii_only:  # an ASCII str always encodes: skip the copy
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if len(text) > limits.max_item_chars:
        text = text[: limits.max_item_chars]
    # No text estimates above two tokens per character (one if ASCII): skip the count
    # for texts that cannot reach the limit, which is nearly all of them.
    bound = len(text) if ascii_only else 2 * len(text)
    if bound > limits.max_item_tokens:
        text = _trimmed(text, limits.max_item_tokens)
    return text


@functools.lru_cache(maxsize=256)
def _trimmed(text: str, max_tokens: int) -> str:
    """:func:`trim_to_tokens`, remembered: long documents come back on every rerank of the
    same query, and trimming one costs milliseconds (a pure function, so safe to share)."""
    return trim_to_tokens(text, max_tokens)


#: One document that takes part in a rerank and the exact text that scores it: ``(doc,
#: text)``. A plain tuple: a rerank builds one per candidate on the hit path.
Candidate: TypeAlias = tuple[D, str]


@dataclass(frozen=True)
class Collected(Generic[D]):
    """The result of :func:`collect`.

    Attributes:
        candidates: documents to score, first occurrence of each id, in input order.
        texts: the unique texts among them, in first-occurrence order (what gets scored).
        seen: how many documents the input held (before deduplication and skipping).
    """

    candidates: tuple[Candidate[D], ...]
    texts: tuple[str, ...]
    seen: int


def iter_docs(query_results: Any) -> Iterable[Any]:
    """Yield the documents of ``dict[str, list[Doc]]`` or ``list[list[Doc]]`` in order.

    ``None`` entries (zvec returns them for deleted rows) are skipped.

    Raises:
        TypeError: for any other shape.
    """
    for _, _, doc in _placed_docs(query_results):
        yield doc


def _placed_docs(query_results: Any) -> Iterator[tuple[Any, int, Any]]:
    """:func:`iter_docs`, each document with its list and index (see :func:`_place`)."""
    for position, docs in _doc_lists(query_results):
        for index, doc in enumerate(docs):
            if doc is not None:
                yield position, index, doc


def _doc_lists(query_results: Any) -> Iterator[tuple[Any, Sequence[Any]]]:
    """The lists of ``query_results`` with their positions, ``None`` lists skipped.

    Raises:
        TypeError: for any shape but a dict or list of lists (or tuples).
    """
    if isinstance(query_results, Mapping):
        lists: Iterable[tuple[Any, Any]] = query_results.items()
    elif isinstance(query_results, (list, tuple)):
        lists = enumerate(query_results)
    else:
        raise TypeError(
            "query_results must be a dict of lists of documents or a list of lists of "
            f"documents, not {type(query_results).__name__}"
        )
    for position, docs in lists:
        if docs is None:
            continue
        if not isinstance(docs, (list, tuple)):
            raise TypeError(
                f"query_results[{position!r}] must be a list of documents, "
                f"not {type(docs).__name__}"
            )
        yield position, docs


def _place(position: Any, index: int | str) -> str:
    """Where a document sits in the input, as the caller would index it."""
    return f"query_results[{position!r}][{index}]"


def _index_of(docs: Sequence[Any], doc: Any) -> int | str:
    """The position of ``doc`` (this very object) in ``docs``; ``"?"`` if it is gone (a
    ``field()`` that changed its own list)."""
    return next((index for index, other in enumerate(docs) if other is doc), "?")


def _unusable(doc: Any, rerank_field: str, where: str, exc: Exception) -> ConfigurationError:
    """The error for a document that failed on the fast path, as precise as can be said."""
    try:
        read_doc(doc, rerank_field, where)  # raises the precise error, if it is one of those
    except ConfigurationError as precise:
        return precise
    return ConfigurationError(
        f"{where}: its id or field {rerank_field!r} could not be used ({type(exc).__name__})"
    )


def collect(query_results: Any, rerank_field: str, limits: ModelLimits) -> Collected[Any]:
    """Pick the documents to score and the exact texts to send. Pure.

    Documents are deduplicated by ``id`` across all lists; the first occurrence that has text
    wins (as in zvec, a copy without the field does not hide a later copy that has it).
    Documents without text in ``rerank_field`` (see :func:`prepare_text`) are skipped.
    Identical texts under different ids are listed once in ``texts``.

    Raises:
        TypeError: ``query_results`` is not a dict or list of lists.
        ConfigurationError: an entry is not a usable document (no ``id`` or ``field()``,
            an unhashable id, a field that cannot be read); the message names its place.
    """
    candidates: list[Candidate[Any]] = []
    texts: dict[str, None] = {}
    ids: set[Any] = set()
    seen = 0
    append, add = candidates.append, ids.add
    # An ASCII text this short needs nothing of prepare_text but the strip (no encoding to
    # repair, nothing to trim): the usual case, done inline.
    short = min(limits.max_item_tokens, limits.max_item_chars)
    # The loops are inlined (not :func:`_placed_docs`): a generator's per-document resume
    # was a tenth of an all-hit rerank.
    for position, docs in _doc_lists(query_results):
        seen += len(docs)
        for doc in docs:  # no enumerate: the index is found again only for an error
            if doc is None:
                seen -= 1
                continue
            try:
                doc_id = doc.id
                if doc_id in ids:
                    continue
                value = doc.field(rerank_field)
                text = value.strip() if type(value) is str else None
                if not text or len(text) > short or not text.isascii():
                    text = prepare_text(value, limits)
                    if text is None:
                        continue
                add(doc_id)  # `set() in ids` works (as a frozenset); adding finds it unhashable
            except Exception as exc:  # the caller's object misbehaved: say which and how
                where = _place(position, _index_of(docs, doc))
                raise _unusable(doc, rerank_field, where, exc) from exc
            append((doc, text))
            texts[text] = None
    return Collected(tuple(candidates), tuple(texts), seen)


def plan_batches(
    query: str,
    texts: Sequence[str],
    limits: ModelLimits,
    *,
    instruct: str | None = None,
    budget_fraction: float = 0.9,
) -> list[list[int]]:
    """Split ``texts`` into requests within the document limit and the token budget. Pure.

    Returns lists of indexes into ``texts``, in order. Each request holds at most
    ``limits.max_documents`` texts and at most ``budget_fraction * max_request_tokens``
    estimated tokens, counting the query once per document, each document, and the instruct
    once. Every text is assumed already trimmed by :func:`prepare_text`.
    """
    return list(
        iter_batches(query, texts, limits, instruct=instruct, budget_fraction=budget_fraction)
    )


def iter_batches(
    query: str,
    texts: Sequence[str],
    limits: ModelLimits,
    *,
    instruct: str | None = None,
    budget_fraction: float = 0.9,
) -> Iterator[list[int]]:
    """:func:`plan_batches`, one request at a time: the first can be sent while the rest
    are still being planned (estimating thousands of texts takes tens of milliseconds)."""
    if not texts:
        return
    budget = int(limits.max_request_tokens * budget_fraction)
    query_tokens = min(estimate_tokens(query), limits.max_item_tokens)
    fixed = estimate_tokens(instruct) if instruct else 0
    current: list[int] = []
    used = fixed
    for index, text in enumerate(texts):
        cost = query_tokens + min(estimate_tokens(text), limits.max_item_tokens)
        if current and (len(current) >= limits.max_documents or used + cost > budget):
            yield current
            current, used = [], fixed
        current.append(index)
        used += cost
    yield current


def assemble(
    candidates: Sequence[Candidate[D]],
    scores: Mapping[str, float],
    topn: int,
) -> list[D]:
    """Return up to ``topn`` documents with their rerank score, best first. Pure.

    Ties keep input order (both ``sorted(reverse=True)`` and ``heapq.nlargest``, used when
    ``topn`` is small against the candidates, are stable). Each document is rebuilt with
    ``doc._replace(score=...)`` so callers get their own document type back.
    """

    # Scores in candidate order, then positions ranked by them: every pass is C-level
    # (``map`` of built-ins, a bound method as the sort key), no Python per candidate.
    values = list(map(scores.__getitem__, map(_TEXT, candidates)))
    if topn > 0 and topn * _NLARGEST_RATIO <= len(candidates):
        ranked = heapq.nlargest(topn, range(len(values)), key=values.__getitem__)
    else:
        ranked = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:topn]
    return [candidates[i][0]._replace(score=values[i]) for i in ranked]  # type: ignore[attr-defined]


_TEXT = itemgetter(1)
# heapq.nlargest (a Python loop) beats sorting the positions (all C) only once the candidates
# outnumber topn about this many times (measured: even at 1,000 for topn=10, 10x at 10,000).
_NLARGEST_RATIO = 100
