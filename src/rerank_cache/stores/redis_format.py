"""What the Redis store writes, and reading it back: pure functions, no redis-py.

The layout under a namespace (default :data:`DEFAULT_NAMESPACE`)::

    {ns}:s:{key}     one score, key from rerank_cache.keys; the value is repr(float) and the
                     time to live is set on the key (SET ... PX), so Redis expires it itself.
                     A store with a ``stale_ttl`` writes "repr(float)|expiry ms" and sets
                     the key's TTL to ttl + stale_ttl: past the expiry the score is kept
                     only for ``on_error="stale"`` (:func:`encode_score`, :func:`parse_entry`)
    {ns}:counters    hash "{counter}:{model}" -> integer (HINCRBY): hits, misses, usage...
    {ns}:entries     hash "{expiry bucket}:{ttl ms}:{model}" -> scores stored (HINCRBY)
    {ns}:c:{key}     a claim on a score being fetched (``claims=True``): the claiming
                     process's name, expiring with the lease (rerank_cache.stores.redis_claims)

Also the URL handling that keeps passwords out of messages (:func:`redact_url`, kept in
:mod:`rerank_cache.urls` and re-exported here).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError
from ..urls import redact_url, url_secrets
from .stats import COUNTER_NAMES

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_NAMESPACE",
    "NAMESPACE",
    "Bucket",
    "bucket_field",
    "bucket_width",
    "encode_score",
    "expiry_bucket_field",
    "int_or_none",
    "live_entries",
    "live_entry",
    "parse_counters",
    "parse_entry",
    "parse_score",
    "redact_url",
    "split_namespace",
    "text",
    "url_secrets",
]

#: URL schemes of a Redis Cluster (any one node; the client finds the others).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: The namespace (key prefix) used when none is given.
DEFAULT_NAMESPACE = "rerank-cache"
#: What a namespace may be.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_MAX_SCORE_CHARS = 32  # repr() of any finite float is at most 24 characters
_BUCKETS_PER_TTL = 512
_MIN_BUCKET_MS = 1_000
_MAX_BUCKET_MS = 3_600_000


def parse_score(raw: bytes | str | None) -> float | None:
    """Return the float a stored value holds, or None unless it is exactly ``repr`` of one.

    Strict on purpose: only what :class:`RedisScoreCache` writes is accepted, so a value
    planted or mangled by other software reads as a miss, never as a wrong score.

    Example:
        >>> parse_score(b"0.7314"), parse_score(b"0.73140"), parse_score(b"nan")
        (0.7314, None, None)
    """
    if raw is None or len(raw) > _MAX_SCORE_CHARS:
        return None
    text = _ascii(raw)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or repr(value) != text:
        return None
    return value


def encode_score(value: float, expires_ms: int | None) -> str:
    """What is stored for a score: its ``repr``, then ``|`` and its real expiry (Unix ms)
    when the key outlives it (a store with a ``stale_ttl``)."""
    return repr(value) if expires_ms is None else f"{value!r}|{expires_ms}"


def parse_entry(raw: bytes | str | None) -> tuple[float, int | None] | None:
    """Return a stored score and its real expiry (Unix ms; None: the key's own TTL), or
    None unless it is exactly what :func:`encode_score` writes.

    Example:
        >>> parse_entry(b"0.5"), parse_entry(b"0.5|1700000000000"), parse_entry(b"0.5|01")
        ((0.5, None), (0.5, 1700000000000), None)
    """
    if raw is None or len(raw) > _MAX_SCORE_CHARS + 17:  # "|" and a 16-digit expiry
        return None
    decoded = _ascii(raw)
    if decoded is None:
        return None
    head, sep, tail = decoded.partition("|")
    value = parse_score(head)
    if value is None:
        return None
    if not sep:
        return value, None
    if not tail.isdigit() or str(int(tail)) != tail:
        return None
    return value, int(tail)


def live_entry(raw: Any, pttl: Any, now: float) -> tuple[float, float | None] | None:
    """A score read together with its key's ``PTTL``, as ``(score, expires_at)`` (epoch
    seconds; None: never); None if the reply is an error, the value is unsafe, the key is
    gone (``PTTL`` -2), or it is kept past its ttl only for ``on_error="stale"``.

    Example:
        >>> live_entry(b"0.5", 2000, 100.0), live_entry(b"0.5", -1, 100.0)
        ((0.5, 102.0), (0.5, None))
    """
    if isinstance(raw, Exception) or not isinstance(pttl, int) or pttl == -2:
        return None
    entry = parse_entry(raw)
    if entry is None:
        return None
    score, real_expiry_ms = entry
    if real_expiry_ms is not None:  # the key outlives its ttl: the real expiry decides
        return (score, real_expiry_ms / 1000) if real_expiry_ms > now * 1000 else None
    return score, None if pttl < 0 else now + pttl / 1000


def _ascii(raw: bytes | str) -> str | None:
    """A stored value as text, or None if its bytes are not ASCII (never a score)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def split_namespace(url: str) -> tuple[str, str | None]:
    """Take a ``namespace`` query parameter out of a Redis URL (redis-py would refuse it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [value for name, value in query if name == "namespace"]
    if len(names) > 1:
        raise ConfigurationError("the cache URL names more than one namespace")
    rest = [(name, value) for name, value in query if name != "namespace"]
    return urlunsplit(parts._replace(query=urlencode(rest))), (names[0] if names else None)


def text(value: bytes | str) -> str:
    """A hash field or key from Redis as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def bucket_width(ttl_ms: int) -> int:
    """Milliseconds one entry bucket spans for scores written with ``ttl_ms``."""
    return min(max(ttl_ms // _BUCKETS_PER_TTL, _MIN_BUCKET_MS), _MAX_BUCKET_MS)


def bucket_field(model: str, ttl_ms: int | None, now_ms: int) -> str:
    """The ``{ns}:entries`` field counting scores of ``model`` written now with ``ttl_ms``."""
    return expiry_bucket_field(model, None if ttl_ms is None else now_ms + ttl_ms, ttl_ms or 0)


def expiry_bucket_field(model: str, expire_ms: int | None, ttl_ms: int) -> str:
    """The ``{ns}:entries`` field counting a score of ``model`` that expires at ``expire_ms``
    (None: never), in buckets as wide as a ``ttl_ms`` store's. An imported score keeps its
    own expiry, so it is counted by that, not by the time it was written."""
    if expire_ms is None:
        return f"0:0:{model}"  # never expires
    width = bucket_width(ttl_ms)
    end = -(-expire_ms // width) * width  # expiry rounded up to the bucket's end
    return f"{end}:{ttl_ms}:{model}"


class Bucket:
    """One parsed ``{ns}:entries`` field: end of expiry (0 = never), ttl, model."""

    __slots__ = ("end", "model", "ttl")

    def __init__(self, end: int, ttl: int, model: str) -> None:
        self.end, self.ttl, self.model = end, ttl, model

    @classmethod
    def parse(cls, field: bytes | str) -> Bucket | None:
        end, _, rest = text(field).partition(":")
        ttl, sep, model = rest.partition(":")
        if not sep or not end.isdigit() or not ttl.isdigit():
            return None
        return cls(int(end), int(ttl), model)

    def live(self, now_ms: int) -> bool:
        """Whether the scores counted here have not all expired at ``now_ms``."""
        return self.end == 0 or self.end > now_ms

    def stored_between(self) -> tuple[int, int] | None:
        """Earliest and latest store time (ms) of the scores counted here."""
        if self.end == 0:
            return None
        return self.end - bucket_width(self.ttl) - self.ttl, self.end - self.ttl


def int_or_none(value: Any) -> int | None:
    """A counter's value as an int, or None if it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_counters(raw: Mapping[Any, Any]) -> dict[str, Counter[str]]:
    """The ``{ns}:counters`` hash by model; malformed fields are ignored."""
    out: dict[str, Counter[str]] = {}
    for field, value in raw.items():
        name, sep, model = text(field).partition(":")
        number = int_or_none(value)
        if sep and name in COUNTER_NAMES and number is not None:
            out.setdefault(model, Counter())[name] += number
    return out


def live_entries(
    raw: Mapping[Any, Any], now_ms: int
) -> tuple[Counter[str], int | None, int | None]:
    """Live scores per model from the ``{ns}:entries`` hash, and the earliest and latest
    store time (ms) of those that expire."""
    entries: Counter[str] = Counter()
    oldest: int | None = None
    newest: int | None = None
    for field, value in raw.items():
        bucket = Bucket.parse(field)
        count = int_or_none(value)
        if bucket is None or count is None or not bucket.live(now_ms):
            continue
        entries[bucket.model] += count
        span = bucket.stored_between() if count > 0 else None
        if span is not None:
            oldest = span[0] if oldest is None else min(oldest, span[0])
            newest = span[1] if newest is None else max(newest, span[1])
    return entries, oldest, newest
