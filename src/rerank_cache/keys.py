"""Cache keys: pure, versioned derivation of the key one (query, document) score is stored under.

Everything that changes a score is in the key: the model, the ``instruct`` text (or its
absence), the exact query text and the exact document text sent, hashed together with one
128-bit xxhash, so the store holds no plaintext query or document::

    key      = xxh3_128(b"rerank-cache/v2" + field(model) + field(instruct) + field(query)
                        + utf8(document))
    field(s) = 8-byte big-endian length + utf8(s)
    instruct: None is the single byte 0xFF; a string is 0x00 + field(instruct)

The length prefixes make the encoding unambiguous: moving text from one field to another
always changes the bytes hashed, and the document, last, is whatever follows the query.
One hash per document (version 1 hashed the document first, then that digest with the
rest). The stored key string is ``"2:<model>:<32 hex digits>"``; the model stays readable
so stats and ``clear(model=...)`` can group by it.

Changing anything here changes every key: bump :data:`KEY_VERSION` so old entries simply miss.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

__all__ = [
    "HASH_DIGITS",
    "KEY_PREFIX",
    "KEY_VERSION",
    "KeyBuilder",
    "key_head",
    "key_range",
    "model_of",
    "score_key",
]

#: The key-format version, part of every key.
KEY_VERSION = 2
#: What every current-format key starts with: the version and ``":"``.
KEY_PREFIX = f"{KEY_VERSION}:"
#: Hex digits of the hash that ends every key (after the model and a ``":"``).
HASH_DIGITS = 32

_DOMAIN = b"rerank-cache/v%d" % KEY_VERSION
_NO_INSTRUCT = b"\xff"
_LEN = struct.Struct(">Q")


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return _LEN.pack(len(data)) + data


class KeyBuilder:
    """Derives keys for one (model, instruct, query); the shared prefix is encoded once.

    Example:
        >>> kb = KeyBuilder("gte-rerank-v2", None, "what is a vector database")
        >>> kb.key("zvec is an in-process vector database") == score_key(
        ...     "gte-rerank-v2", None, "what is a vector database",
        ...     "zvec is an in-process vector database")
        True
    """

    __slots__ = ("_head", "_prefix")

    def __init__(self, model: str, instruct: str | None, query: str) -> None:
        self._prefix = (
            _DOMAIN
            + _field(model)
            + (_NO_INSTRUCT if instruct is None else b"\x00" + _field(instruct))
            + _field(query)
        )
        self._head = key_head(model)

    def key(self, text: str) -> str:
        """Return the store key of ``text``'s score."""
        return self._head + xxhash.xxh3_128_hexdigest(self._prefix + text.encode())

    def keys(self, texts: Iterable[str]) -> list[str]:
        """Return the store keys of ``texts``' scores, in order (one pass, for the hit path)."""
        head, prefix, hexdigest = self._head, self._prefix, xxhash.xxh3_128_hexdigest
        return [head + hexdigest(prefix + text.encode()) for text in texts]


def score_key(model: str, instruct: str | None, query: str, text: str) -> str:
    """Return the store key of one (model, instruct, query, document text) score."""
    return KeyBuilder(model, instruct, query).key(text)


def key_head(model: str) -> str:
    """Return what every key of ``model`` starts with; the hash's hex digits follow.

    Example:
        >>> key_head("gte-rerank-v2")
        '2:gte-rerank-v2:'
    """
    return f"{KEY_PREFIX}{model}:"


def key_range(model: str | None = None) -> tuple[str, str]:
    """Return ``(low, high)``: every current key (of ``model``, if given) sorts in ``[low, high)``.

    ``";"`` is the character after ``":"``, so ``high`` is the first string past the range.
    A model name containing ``":"`` can make one model's range hold another model's keys.

    Example:
        >>> key_range(), key_range("m")
        (('2:', '2;'), ('2:m:', '2:m;'))
    """
    low = KEY_PREFIX if model is None else key_head(model)
    return low, low[:-1] + ";"


def model_of(key: str) -> str | None:
    """Return the model named in a store key, or None if it is not a current-format key."""
    if not key.startswith(KEY_PREFIX):
        return None
    rest = key[len(KEY_PREFIX) :]
    if len(rest) < HASH_DIGITS + 2 or rest[-HASH_DIGITS - 1] != ":":
        return None
    return rest[: -HASH_DIGITS - 1]
