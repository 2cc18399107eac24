"""Cache keys: pure, versioned derivation of the key one (query, document) score is stored under.

Everything that changes a score is in the key: the model, the ``instruct`` text (or its
absence), the exact query text and the exact document text sent. The document enters as its
own 128-bit xxhash, so the store holds no plaintext query or document::

    doc_hash = xxh3_128(utf8(document))
    prefix   = b"rerank-cache/v2" + field(model) + field(instruct) + field(query)
    digest   = hex(xxh3_64(prefix))[:8] + hex(xxh3_128(prefix + doc_hash))[:24]
    field(s) = 8-byte big-endian length + utf8(s)
    instruct: None is the single byte 0xFF; a string is 0x00 + field(instruct)

The length prefixes make the encoding unambiguous: moving text from one field to another
always changes the bytes hashed. The stored key string is ``"2:<model>:<32 hex digits>"``;
the model stays readable so stats and ``clear(model=...)`` can group by it. The first
:data:`QUERY_TAG_DIGITS` hex digits depend only on (model, instruct, query), so every key of
one call shares them: :func:`query_tag` reads them back, and the Redis Cluster store uses
them as a hash tag that puts one call's keys in one slot.

Changing anything here changes every key: bump :data:`KEY_VERSION` so old entries simply miss.
"""

from __future__ import annotations

import struct

import xxhash

__all__ = [
    "HASH_DIGITS",
    "KEY_PREFIX",
    "KEY_VERSION",
    "QUERY_TAG_DIGITS",
    "KeyBuilder",
    "doc_hash",
    "key_head",
    "key_range",
    "model_of",
    "query_tag",
    "score_key",
]

#: The key-format version, part of every key.
KEY_VERSION = 2
#: What every current-format key starts with: the version and ``":"``.
KEY_PREFIX = f"{KEY_VERSION}:"
#: Hex digits of the hash that ends every key (after the model and a ``":"``).
HASH_DIGITS = 32
#: Leading hex digits of that hash shared by every key of one (model, instruct, query).
QUERY_TAG_DIGITS = 8

_DOMAIN = b"rerank-cache/v%d" % KEY_VERSION
_NO_INSTRUCT = b"\xff"
_LEN = struct.Struct(">Q")


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return _LEN.pack(len(data)) + data


def doc_hash(text: str) -> bytes:
    """Return the 16-byte xxh3-128 digest of a document text (UTF-8)."""
    return xxhash.xxh3_128_digest(text.encode("utf-8"))


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
        # 32 bits of (model, instruct, query) then 96 of the pair: two keys of one query
        # collide with odds 2**-96, keys of different queries 2**-128 as before.
        self._head = key_head(model) + xxhash.xxh3_64_hexdigest(self._prefix)[:QUERY_TAG_DIGITS]

    def key(self, text: str) -> str:
        """Return the store key of ``text``'s score."""
        return self.key_for_hash(doc_hash(text))

    def key_for_hash(self, digest: bytes) -> str:
        """Return the store key for a document already hashed with :func:`doc_hash`."""
        tail = xxhash.xxh3_128_hexdigest(self._prefix + digest)
        return self._head + tail[: HASH_DIGITS - QUERY_TAG_DIGITS]


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


def query_tag(key: str) -> str | None:
    """Return the part of a key shared by every key of its (model, instruct, query), or None.

    None for a key not in the current format. Keys of one call share the tag; keys of
    different queries almost always differ in it.

    Example:
        >>> a = score_key("m", None, "q", "first document")
        >>> b = score_key("m", None, "q", "second document")
        >>> query_tag(a) == query_tag(b) != query_tag(score_key("m", None, "other", "x"))
        True
    """
    if model_of(key) is None:
        return None
    start = len(key) - HASH_DIGITS
    return key[start : start + QUERY_TAG_DIGITS]
