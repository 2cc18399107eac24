"""``rerank-cache stats``: what the cache holds and what it saved."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ..metrics import render_store_metrics
from ..pricing import CURRENCY, estimate_cost
from ..stores.disk_admin import read_stats
from ..stores.stats import CacheStats
from .errors import EXIT_OK
from .target import Target, open_redis, require_writable
from .units import size_text

__all__ = ["run_stats", "stats_json"]


def _saved(stats_hits: int, tokens: int, documents: int) -> int:
    """Estimate tokens saved by hits: hits times the average billed tokens per document."""
    return round(stats_hits * tokens / documents) if documents else 0


def stats_json(stats: CacheStats) -> dict[str, Any]:
    """Return the ``stats --json`` object: schema version, totals, warming, per-model breakdown.

    Hits, misses, hit rate and the savings count applications' lookups only; ``warm`` (also
    in each model) holds what warming did, and its tokens are in ``tokens_billed`` too.
    """
    models: dict[str, Any] = {}
    saved_tokens = 0
    saved_cost = 0.0
    for name, m in stats.models.items():
        if not name:
            continue  # counters not tied to a model (store errors)
        tokens = _saved(m.hits, m.tokens_billed, m.documents_sent)
        cost = estimate_cost(name, tokens)
        saved_tokens += tokens
        saved_cost += cost or 0.0
        models[name] = {
            **m.model_dump(),
            "hit_rate": m.hit_rate,
            "estimated_tokens_saved": tokens,
            "estimated_cost_saved": cost,
        }

    def when(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "schema_version": stats.schema_version,
        "directory": stats.directory,
        "entries": stats.entries,
        "expired_entries": stats.expired_entries,
        "size_bytes": stats.size_bytes,
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_rate": stats.hit_rate,
        "api_requests": stats.api_requests,
        "documents_sent": stats.documents_sent,
        "tokens_billed": stats.tokens_billed,
        "estimated_tokens_saved": saved_tokens,
        "estimated_cost_saved": round(saved_cost, 6),
        "currency": CURRENCY,
        "duplicate_sends": stats.duplicate_sends,
        "store_errors": stats.store_errors,
        "fallbacks": stats.fallbacks,
        "stale_served": stats.stale_served,
        "oldest_entry": when(stats.oldest_entry),
        "newest_entry": when(stats.newest_entry),
        "warm": stats.warm.model_dump(),
        "models": models,
    }


def _hit_rate(counts: dict[str, Any]) -> str:
    """The hit rate as a percentage; a dash when nothing was looked up (0 % would alarm)."""
    return f"{counts['hit_rate']:.1%}" if counts["hits"] + counts["misses"] else "\u2014"


def run_stats(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        # Read-only: nothing is written (no counters are pending in a fresh store).
        with open_redis(target, ping=False) as redis_store:
            stats = redis_store.stats()
        size_label = "memory (whole Redis)"
    else:
        # Every application would fail open on it: an empty table would say "fine".
        require_writable(target)
        stats = read_stats(target)
        size_label = "size on disk"
    if args.prometheus:
        print("\n".join(render_store_metrics(stats)))
        return EXIT_OK
    data = stats_json(stats)
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    out = sys.stdout
    if isinstance(target, Path) and not os.path.lexists(target):
        print(f"(no cache at {target} yet)", file=sys.stderr)

    def row(label: str, value: str) -> None:
        print(f"  {label:<26}{value}", file=out)

    def when(t: str | None) -> str:
        return t.replace("T", " ")[:19] + " UTC" if t else "-"

    print(f"rerank-cache {data['directory']}", file=out)
    row("entries", f"{data['entries']:,} live, {data['expired_entries']:,} expired")
    row(size_label, size_text(data["size_bytes"]))
    row("oldest / newest entry", f"{when(data['oldest_entry'])} / {when(data['newest_entry'])}")
    row("hits", f"{data['hits']:,}")
    row("misses", f"{data['misses']:,}")
    row("hit rate", _hit_rate(data))
    row("API requests", f"{data['api_requests']:,}")
    row("documents sent", f"{data['documents_sent']:,}")
    row("tokens billed", f"{data['tokens_billed']:,}")
    row("tokens saved (estimate)", f"{data['estimated_tokens_saved']:,}")
    row("cost saved (estimate)", f"{data['estimated_cost_saved']:.4f} {CURRENCY}")
    row("duplicate sends", f"{data['duplicate_sends']:,}")
    row("store errors", f"{data['store_errors']:,}")
    row("fallbacks", f"{data['fallbacks']:,}")
    row("stale served", f"{data['stale_served']:,}")
    warm = data["warm"]
    if any(warm.values()):  # a cache never warmed: nothing to say
        print(file=out)
        print("  warming (not in hits, misses or savings; its tokens are in the totals)", file=out)
        row("  lines", f"{warm['lines']:,}")
        row("  pairs looked up", f"{warm['looked_up']:,}")
        row("  already cached", f"{warm['already_cached']:,}")
        row("  sent", f"{warm['sent']:,}")
        row("  tokens billed", f"{warm['tokens_billed']:,}")
    if data["models"]:
        print(file=out)
        header = (
            "model",
            "entries",
            "hits",
            "misses",
            "hit rate",
            "requests",
            "docs sent",
            "tokens",
            "saved (est)",
        )
        rows = [header] + [
            (
                name,
                f"{m['entries']:,}",
                f"{m['hits']:,}",
                f"{m['misses']:,}",
                _hit_rate(m),
                f"{m['api_requests']:,}",
                f"{m['documents_sent']:,}",
                f"{m['tokens_billed']:,}",
                f"{m['estimated_tokens_saved']:,}",
            )
            for name, m in data["models"].items()
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            cells = [r[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
            ]
            print("  " + "  ".join(cells), file=out)
    return EXIT_OK
