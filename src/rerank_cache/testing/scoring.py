"""How the local server bills tokens and scores pairs: deterministic stand-ins for DashScope's.

Both are public (re-exported by :mod:`rerank_cache.testing`) so a test can compute the
score or the bill it expects without a request.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Final

__all__ = ["count_tokens", "score"]

_ASCII_LETTER_RUN: Final = re.compile(r"[A-Za-z]+")
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
    letters = sum((len(run) + 3) // 4 for run in _ASCII_LETTER_RUN.findall(text))
    singles = len(_ASCII_DIGIT_OR_PUNCT.findall(text))
    non_ascii = len(_NON_ASCII_NON_SPACE.findall(text))
    astral = len(_ASTRAL.findall(text))
    return letters + singles + non_ascii + astral


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _jitter(model: str, instruct: str | None, query: str, document: str) -> float:
    digest = hashlib.blake2b(digest_size=8, person=b"rerank-testing")
    for part in (model, instruct or "", query, document):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return int.from_bytes(digest.digest(), "big") / 2.0**64 * 0.05


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
    query_tokens = set(_words(query))
    document_tokens = _words(document)
    coverage = (
        len(query_tokens.intersection(document_tokens)) / len(query_tokens) if query_tokens else 0.0
    )
    length_factor = 1.0 / (1.0 + math.log1p(len(document_tokens)) / 10.0)
    value = (
        0.02
        + 0.9 * math.pow(coverage, 0.8) * length_factor
        + _jitter(model, instruct, query, document)
    )
    return min(1.0, max(0.0, value))
