"""Cache keys: pure, versioned derivation of the key one (query, document) score is stored under.

Everything that changes a score is in the key: who scored it (:func:`scorer_id` of the
endpoint), the model, the ``instruct`` text (or its absence), the exact query text and the
exact document text sent, hashed with xxhash, so the store holds no plaintext query or
document::

    prefix   = b"rerank-cache/v3" + field(scorer) + field(model) + field(instruct)
               + field(query)
    tag      = hex(xxh3_64(prefix))[:8]
    seed     = xxh3_64(prefix, seed=1)                  (a 64-bit integer)
    digest   = tag + hex(xxh3_128(utf8(document), seed))   (8 + 32 hex digits)
    field(s) = 8-byte big-endian length + utf8(s)
    instruct: None is the single byte 0xFF; a string is 0x00 + field(instruct)

The length prefixes make the encoding unambiguous: moving text from one field to another
always changes the prefix. Everything but the document is hashed once per call, into the tag
and the seed; each document is then hashed once, on its own bytes, with that seed (no copy
of the prefix in front of every document: the hit path derives a key per candidate).
The stored key string is ``"3:<model>:<40 hex digits>"``; the model stays readable so stats
and ``clear(model=...)`` can group by it. The first :data:`QUERY_TAG_DIGITS` hex digits
depend only on (scorer, model, instruct, query), so every key of one call shares them:
:func:`query_tag` reads them back, and the Redis Cluster store uses them as a hash tag that
puts one call's keys in one slot. Two keys of one query collide with odds 2**-128; keys of
different queries need the same tag and the same seed (2**-96), or a 128-bit hash collision.

Changing anything here changes every key: bump :data:`KEY_VERSION` so old entries simply miss.
Version 2 added the scorer (a score from a test, staging or self-hosted endpoint is never
served for DashScope, nor the other way round), one hash per document and the query tag.
Version 3 hashes each document alone under a seed derived from the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from urllib.parse import urlsplit

import xxhash

__all__ = [
    "DASHSCOPE_SCORER",
    "DASHSCOPE_URLS",
    "HASH_DIGITS",
    "KEY_PREFIX",
    "KEY_VERSION",
    "QUERY_TAG_DIGITS",
    "KeyBuilder",
    "key_head",
    "key_range",
    "model_of",
    "query_tag",
    "score_key",
    "scorer_id",
]

#: The key-format version, part of every key.
KEY_VERSION = 3
#: What every current-format key starts with: the version and ``":"``.
KEY_PREFIX = f"{KEY_VERSION}:"
#: Hex digits of the hash that ends every key (after the model and a ``":"``).
HASH_DIGITS = 40
#: The first hex digits of that hash, shared by every key of one query (see :func:`query_tag`).
QUERY_TAG_DIGITS = 8
# The seed of the documents' hash is this hash of the prefix (the tag is the unseeded one).
_SEED_OF_SEEDS = 1

_DOMAIN = b"rerank-cache/v%d" % KEY_VERSION
_NO_INSTRUCT = b"\xff"
_LEN = struct.Struct(">Q")


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return _LEN.pack(len(data)) + data


#: The scorer of DashScope's own endpoints: its regions score alike and share a key space.
DASHSCOPE_SCORER = "dashscope"
#: DashScope's own rerank API base addresses (Beijing, international), normalised.
DASHSCOPE_URLS = frozenset(
    {
        "https://dashscope.aliyuncs.com:443/api/v1",
        "https://dashscope-intl.aliyuncs.com:443/api/v1",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def scorer_id(base_url: str) -> str:
    """Return who scores requests sent to ``base_url``, as the cache key holds it.

    DashScope's own endpoints are :data:`DASHSCOPE_SCORER`; any other address (a test
    server, a staging or self-hosted endpoint) is ``"url:"`` and a hash of its normalised
    ``scheme://host:port/path`` — never its credentials, query or fragment.

    Example:
        >>> scorer_id("https://dashscope-intl.aliyuncs.com/api/v1/")
        'dashscope'
        >>> scorer_id("http://user:pw@127.0.0.1:8000/api/v1") == scorer_id(
        ...     "HTTP://127.0.0.1:8000/api/v1")
        True
    """
    try:
        parts = urlsplit(base_url.strip())
        port = parts.port
    except ValueError:  # not a URL we can normalise: it is its own scorer
        return "url:" + xxhash.xxh3_64_hexdigest(base_url.encode("utf-8", "surrogatepass"))
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)
    path = parts.path.rstrip("/")
    normal = f"{scheme}://{host}:{port}{path}"
    if normal in DASHSCOPE_URLS:
        return DASHSCOPE_SCORER
    return "url:" + xxhash.xxh3_64_hexdigest(normal.encode("utf-8", "surrogatepass"))


class KeyBuilder:
    """Derives keys for one (model, instruct, query); the shared prefix is encoded once.

    Example:
        >>> kb = KeyBuilder("gte-rerank-v2", None, "what is a vector database")
        >>> kb.key("zvec is an in-process vector database") == score_key(
        ...     "gte-rerank-v2", None, "what is a vector database",
        ...     "zvec is an in-process vector database")
        True
    """

    __slots__ = ("_head", "_seed")

    def __init__(
        self, model: str, instruct: str | None, query: str, *, scorer: str = DASHSCOPE_SCORER
    ) -> None:
        prefix = (
            _DOMAIN
            + _field(scorer)
            + _field(model)
            + (_NO_INSTRUCT if instruct is None else b"\x00" + _field(instruct))
            + _field(query)
        )
        # The query tag: shared by every key of this (scorer, model, instruct, query).
        self._head = key_head(model) + xxhash.xxh3_64_hexdigest(prefix)[:QUERY_TAG_DIGITS]
        self._seed = xxhash.xxh3_64_intdigest(prefix, _SEED_OF_SEEDS)

    def key(self, text: str) -> str:
        """Return the store key of ``text``'s score."""
        return self._head + xxhash.xxh3_128_hexdigest(text.encode(), self._seed)

    def keys(self, texts: Iterable[str]) -> list[str]:
        """Return the store keys of ``texts``' scores, in order (one pass, for the hit path)."""
        head, seed, hexdigest = self._head, self._seed, xxhash.xxh3_128_hexdigest
        return [head + hexdigest(text.encode(), seed) for text in texts]


def score_key(
    model: str, instruct: str | None, query: str, text: str, *, scorer: str = DASHSCOPE_SCORER
) -> str:
    """Return the store key of one (model, instruct, query, document text) score, as
    ``scorer`` (see :func:`scorer_id`; DashScope by default) gave it."""
    return KeyBuilder(model, instruct, query, scorer=scorer).key(text)


def key_head(model: str) -> str:
    """Return what every key of ``model`` starts with; the hash's hex digits follow.

    Example:
        >>> key_head("gte-rerank-v2")
        '3:gte-rerank-v2:'
    """
    return f"{KEY_PREFIX}{model}:"


def key_range(model: str | None = None) -> tuple[str, str]:
    """Return ``(low, high)``: every current key (of ``model``, if given) sorts in ``[low, high)``.

    ``";"`` is the character after ``":"``, so ``high`` is the first string past the range.
    A model name containing ``":"`` can make one model's range hold another model's keys.

    Example:
        >>> key_range(), key_range("m")
        (('3:', '3;'), ('3:m:', '3:m;'))
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
    """Return the part of a key shared by every key of its (scorer, model, instruct, query).

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
