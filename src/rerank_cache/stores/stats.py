"""What a store reports: :class:`CacheStats`, :class:`ModelStats`, :class:`CheckReport`.

Every store keeps the same per-model counters (:data:`COUNTER_NAMES`) and hands them, with
its entry counts, to :func:`build_stats`, so ``stats()`` means the same on disk and on Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "COUNTER_NAMES",
    "STATS_SCHEMA_VERSION",
    "CacheStats",
    "CheckReport",
    "ModelStats",
    "WarmStats",
    "build_stats",
]

#: Version of the ``stats()`` / ``--json`` schema. 2: ``hits``, ``misses``, ``hit_rate`` and the
#: savings count applications' lookups only, warming's are in ``warm``; in 1 they included
#: warming's and there was no ``warm``.
STATS_SCHEMA_VERSION: Final = 2
#: The usage counters every store keeps per model (``store_errors`` under the model ``""``).
COUNTER_NAMES = (
    "hits",
    "misses",
    "api_requests",
    "documents_sent",
    "tokens_billed",
    "duplicate_sends",
    "store_errors",
    "fallbacks",
    "stale_served",
    *(f"warm_{name}" for name in ("lines", "looked_up", "cached", "sent", "tokens_billed")),
)


class WarmStats(BaseModel):
    """What warming (``rerank-cache warm``) did, kept apart from the applications' lookups.

    ``lines``: input lines whose pairs were looked up; ``looked_up``: pairs looked up;
    ``already_cached``: of those, pairs found in the store; ``sent``: documents sent to
    DashScope; ``tokens_billed``: what DashScope billed for them (also in the totals).
    """

    model_config = ConfigDict(frozen=True)

    lines: int = 0
    looked_up: int = 0
    already_cached: int = 0
    sent: int = 0
    tokens_billed: int = 0

    @classmethod
    def from_counters(cls, c: Mapping[str, int]) -> WarmStats:
        """From a model's (or the total's) ``warm_*`` counters."""
        return cls(
            lines=c.get("warm_lines", 0),
            looked_up=c.get("warm_looked_up", 0),
            already_cached=c.get("warm_cached", 0),
            sent=c.get("warm_sent", 0),
            tokens_billed=c.get("warm_tokens_billed", 0),
        )


class ModelStats(BaseModel):
    """Per-model usage and entries (``hits`` and ``misses``: applications' lookups only)."""

    model_config = ConfigDict(frozen=True)

    entries: int = 0
    hits: int = 0
    misses: int = 0
    api_requests: int = 0
    documents_sent: int = 0
    tokens_billed: int = 0
    duplicate_sends: int = 0
    fallbacks: int = 0
    stale_served: int = 0
    warm: WarmStats = WarmStats()

    @property
    def hit_rate(self) -> float:
        """Hits over pairs looked up (0.0 when nothing was looked up)."""
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class CacheStats(BaseModel):
    """What the cache holds and what it saved, across every process using it.

    ``hits`` and ``misses`` count (query, document) pairs looked up by applications
    (``rerank``, ``arerank``, ``score_texts``); warming is counted apart, in ``warm``.
    ``api_requests``, ``documents_sent`` and ``tokens_billed`` count every successful API
    request, warming's included (it is on the bill); ``duplicate_sends`` counts scores fetched
    that another process had stored in the meantime; ``store_errors`` counts storage
    operations that failed open; ``stale_served`` counts scores past their ttl served
    because DashScope failed (``on_error="stale"``).

    ``schema_version`` is :data:`STATS_SCHEMA_VERSION` for stats a store builds. A version 1
    dump validates, keeping its 1 (its ``hits`` include warming's lookups; ``warm`` reads as
    zeros), so it is never mistaken for version 2; any other version is refused.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1, 2] = STATS_SCHEMA_VERSION
    directory: str
    entries: int
    expired_entries: int
    size_bytes: int
    hits: int
    misses: int
    hit_rate: float
    api_requests: int
    documents_sent: int
    tokens_billed: int
    duplicate_sends: int
    store_errors: int
    fallbacks: int
    stale_served: int = 0
    oldest_entry: datetime | None
    newest_entry: datetime | None
    models: dict[str, ModelStats]
    warm: WarmStats = WarmStats()


class CheckReport(BaseModel):
    """The result of a store's ``check()``."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    integrity: str
    rows: int
    unsafe_rows: int
    fixed: int
    messages: list[str]


def build_stats(
    location: str,
    counters: Mapping[str, Counter[str]],
    entries: Mapping[str, int],
    *,
    expired: int,
    size: int,
    oldest: datetime | None,
    newest: datetime | None,
) -> CacheStats:
    """Assemble :class:`CacheStats` from per-model counters and entry counts (any store).

    Counters filed under the model ``""`` (store errors) count in the totals only.
    """
    models: dict[str, ModelStats] = {}
    for model in sorted((set(counters) | set(entries)) - {""}):
        c = counters.get(model, Counter())
        models[model] = ModelStats(
            entries=max(0, entries.get(model, 0)),
            warm=WarmStats.from_counters(c),
            **{
                name: c[name] for name in ModelStats.model_fields if name not in ("entries", "warm")
            },
        )
    total: Counter[str] = Counter()
    for c in counters.values():
        total.update(c)
    looked_up = total["hits"] + total["misses"]
    return CacheStats(
        directory=location,
        entries=sum(m.entries for m in models.values()),
        expired_entries=expired,
        size_bytes=size,
        hits=total["hits"],
        misses=total["misses"],
        hit_rate=total["hits"] / looked_up if looked_up else 0.0,
        api_requests=total["api_requests"],
        documents_sent=total["documents_sent"],
        tokens_billed=total["tokens_billed"],
        duplicate_sends=total["duplicate_sends"],
        store_errors=total["store_errors"],
        fallbacks=total["fallbacks"],
        stale_served=total["stale_served"],
        oldest_entry=oldest,
        newest_entry=newest,
        models=models,
        warm=WarmStats.from_counters(total),
    )
