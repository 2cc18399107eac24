"""How the local server bills tokens and scores pairs: deterministic stand-ins for DashScope's.

Both are public (re-exported by :mod:`rerank_cache.testing`) so a test can compute the
score or the bill it expects without a request.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any, Final

__all__ = ["count_tokens", "pair_scorer", "score"]

_ASCII_LETTER_PIECE: Final = re.compile(r"[A-Za-z]{1,4}")
_ASCII_DIGIT_OR_PUNCT: Final = re.compile(r"[0-9!-/:-@\[-`{-~]")
_NON_ASCII_NON_SPACE: Final = re.compile(r"[^\x00-\x7f\s]")
_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")

# Han ideographs (with extensions and compatibility forms), kana: one token per character.
_CJK: Final = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_WORD: Final = re.compile("[" + _CJK + "]|[^\\W" + _CJK + "]+")


def count_tokens(text: str) -> int:
    """Count tokens the way the server bills them (a deterministic stand-in for a BPE).

    The rule: each maximal run of ASCII letters counts ``ceil(len / 4)`` tokens; each ASCII
    digit and each ASCII punctuation or symbol character counts 1; every other non-whitespace
    character counts 1, or 2 when it lies outside the Basic Multilingual Plane. Whitespace
    (any character for which :meth:`str.isspace` is true) and ASCII control characters
    count 0.

    Args:
        text: The text to count.

    Returns:
        The number of tokens.

    Example:
        >>> count_tokens("Hello, world 42")
        7
        >>> count_tokens("向量数据库")
        5
    """
    if text.isascii():
        return _count_ascii(text)
    # A greedy match of 1-4 letters splits each run of n letters into ceil(n / 4) pieces.
    letters = len(_ASCII_LETTER_PIECE.findall(text))
    singles = len(_ASCII_DIGIT_OR_PUNCT.findall(text))
    non_ascii = len(_NON_ASCII_NON_SPACE.findall(text))
    astral = len(_ASTRAL.findall(text))
    return letters + singles + non_ascii + astral


# ASCII classed for counting: letters "a", digits and punctuation "1", the rest (spaces and
# controls, which count nothing) " ".
_ASCII_CLASSES: Final = str.maketrans(
    {chr(c): "a" if chr(c).isalpha() else "1" if 33 <= c <= 126 else " " for c in range(128)}
)


def _count_ascii(text: str) -> int:
    """:func:`count_tokens` of an ASCII text, with C string methods instead of regexes.

    After classing, each run of n letters becomes n//4 "b" then n%4 "a"; the leftover
    "a"s of a run are squeezed to one, so each run adds ceil(n / 4) = (n // 4) + (1 if any
    left) and each "1" adds one.
    """
    classed = text.translate(_ASCII_CLASSES).replace("aaaa", "b")
    leftovers = classed.replace("aaa", "a").replace("aa", "a").count("a")
    return classed.count("b") + leftovers + classed.count("1")


# ASCII word characters (what \w matches in ASCII) kept, everything else a space.
_ASCII_WORDS: Final = str.maketrans(
    {chr(c): chr(c) if chr(c).isalnum() or chr(c) == "_" else " " for c in range(128)}
)


def _words(text: str) -> list[str]:
    lowered = text.lower()
    if lowered.isascii():  # the regex's word runs, by C string methods
        return lowered.translate(_ASCII_WORDS).split()
    return _WORD.findall(lowered)


def _jitter_prefix(model: str, instruct: str | None, query: str) -> Any:
    """The jitter's hash of everything but the document (copied once per document)."""
    digest = hashlib.blake2b(digest_size=8, person=b"rerank-testing")
    for part in (model, instruct or "", query):
        _hash_part(digest, part)
    return digest


def _hash_part(digest: Any, part: str) -> None:
    encoded = part.encode("utf-8", "surrogatepass")
    digest.update(len(encoded).to_bytes(8, "big"))
    digest.update(encoded)


def pair_scorer(
    query: str, *, model: str = "gte-rerank-v2", instruct: str | None = None
) -> Callable[[str], float]:
    """Return :func:`score` for this query, model and instruction, as a function of the
    document: the query's part is worked out once (the server scores many documents per
    request). ``pair_scorer(q, model=m)(d) == score(q, d, model=m)`` always.

    Example:
        >>> pair_scorer("vector database")("zvec is a vector database") == score(
        ...     "vector database", "zvec is a vector database")
        True
    """
    query_tokens = set(_words(query))
    prefix = _jitter_prefix(model, instruct, query)

    def scored(document: str) -> float:
        document_tokens = _words(document)
        coverage = (
            len(query_tokens.intersection(document_tokens)) / len(query_tokens)
            if query_tokens
            else 0.0
        )
        length_factor = 1.0 / (1.0 + math.log1p(len(document_tokens)) / 10.0)
        digest = prefix.copy()
        _hash_part(digest, document)
        jitter = int.from_bytes(digest.digest(), "big") / 2.0**64 * 0.05
        value = 0.02 + 0.9 * math.pow(coverage, 0.8) * length_factor + jitter
        return min(1.0, max(0.0, value))

    return scored


def score(
    query: str,
    document: str,
    *,
    model: str = "gte-rerank-v2",
    instruct: str | None = None,
) -> float:
    """Score one (query, document) pair exactly as the server does.

    The score is deterministic and pointwise: it depends only on the pair, the model and the
    instruction, never on the other documents of a request. It behaves like relevance: the
    text is split into lowercase word tokens (``\\w+`` runs, with each CJK character a token
    of its own), and the score grows with the fraction of the query's distinct tokens that
    occur in the document, slightly favouring shorter documents::

        0.02 + 0.9 * coverage ** 0.8 / (1 + log1p(len(document_tokens)) / 10) + jitter

    where ``jitter`` in ``[0, 0.05)`` is a hash of ``(model, instruct or "", query,
    document)``, so ties are rare and a different model or instruction changes the score.
    A document that shares words with a short query therefore scores higher than one that
    shares none. The result is clamped to ``[0, 1]`` and is not rounded.

    Args:
        query: The query text.
        document: The document text.
        model: The model name; it only changes the jitter.
        instruct: The task instruction, if any; it only changes the jitter.

    Returns:
        The relevance score in ``[0, 1]``.
    """
    return pair_scorer(query, model=model, instruct=instruct)(document)
