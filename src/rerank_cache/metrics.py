"""The store's counters for Prometheus: the text exposition format (0.0.4) and a collector.

One description of the metrics (:data:`STORE_COUNTERS` and the ``entries`` gauge) serves
``rerank-cache stats --prometheus``, the proxy's ``/metrics`` and :class:`StoreCollector`,
which a service registers with ``prometheus_client`` (``pip install
'rerank-cache[prometheus]'``) to expose the store on its own ``/metrics``. Every number comes
from :meth:`~rerank_cache.stores.protocols.ScoreStore.stats`, so it covers every process sharing
the store; each series has a ``model`` label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .stores.protocols import ScoreStore
from .stores.stats import CacheStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CONTENT_TYPE",
    "PREFIX",
    "STORE_COUNTERS",
    "StoreCollector",
    "family_header",
    "format_number",
    "label_text",
    "render_store_metrics",
]

#: The HTTP content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Every metric name starts with it.
PREFIX = "rerank_cache_"

#: (metric, CacheStats/ModelStats field, help) of the store's counters.
STORE_COUNTERS = (
    ("hits_total", "hits", "Pairs looked up by applications and found in the score store."),
    ("misses_total", "misses", "Pairs looked up by applications and not found in the store."),
    ("documents_sent_total", "documents_sent", "Documents sent to DashScope."),
    ("tokens_billed_total", "tokens_billed", "Tokens DashScope billed."),
    ("api_requests_total", "api_requests", "Successful requests to DashScope."),
)
_ENTRIES_HELP = "Scores held in the store."


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """``{name="value",...}`` with values escaped as the format requires ("" if none).

    Example:
        >>> label_text([("model", 'a"b\\\\c')])
        '{model="a\\\\"b\\\\\\\\c"}'
    """
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def format_number(value: float) -> str:
    """A sample value: whole numbers without a decimal point."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def family_header(name: str, kind: str, help_text: str) -> list[str]:
    """The ``# HELP`` and ``# TYPE`` lines of metric ``PREFIX + name``."""
    help_escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {PREFIX}{name} {help_escaped}", f"# TYPE {PREFIX}{name} {kind}"]


def render_store_metrics(stats: CacheStats) -> list[str]:
    """The store's counters and entries in the text exposition format, one series per model.

    Example:
        >>> from rerank_cache.stores.stats import build_stats
        >>> from collections import Counter
        >>> stats = build_stats("x", {"m": Counter(hits=3)}, {"m": 2}, expired=0, size=0,
        ...                     oldest=None, newest=None)
        >>> [line for line in render_store_metrics(stats) if line.startswith("rerank_cache_")][:2]
        ['rerank_cache_hits_total{model="m"} 3', 'rerank_cache_misses_total{model="m"} 0']
    """
    lines: list[str] = []
    models = sorted((name, m) for name, m in stats.models.items() if name)
    for name, field_name, help_text in STORE_COUNTERS:
        lines += family_header(name, "counter", help_text)
        for model, per_model in models:
            value = getattr(per_model, field_name)
            lines.append(f"{PREFIX}{name}{label_text([('model', model)])} {format_number(value)}")
    lines += family_header("entries", "gauge", _ENTRIES_HELP)
    for model, per_model in models:
        lines.append(f"{PREFIX}entries{label_text([('model', model)])} {per_model.entries}")
    return lines


class StoreCollector:
    """A ``prometheus_client`` collector of a score store's counters and entries.

    Register it on a registry (``prometheus_client.REGISTRY.register(StoreCollector(store))``)
    and every scrape reads :meth:`ScoreStore.stats` once: the counts of every process
    sharing the store, each series labelled with its ``model``. Needs the optional
    ``prometheus`` extra. A scrape while the store cannot be read raises, and
    ``prometheus_client`` answers that scrape with an error rather than with made-up zeros.

    Args:
        store: the store to report (it stays open; whoever opened it closes it).
    """

    def __init__(self, store: ScoreStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples: registering does not read the store."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        """The metric families with one sample per model, read from the store now."""
        return self._families(self._store.stats())

    def _families(self, stats: CacheStats | None) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        models = [] if stats is None else sorted((n, m) for n, m in stats.models.items() if n)
        families: list[Any] = [
            (CounterMetricFamily(PREFIX + name, text, labels=["model"]), field_name)
            for name, field_name, text in STORE_COUNTERS
        ]
        families.append(
            (GaugeMetricFamily(PREFIX + "entries", _ENTRIES_HELP, labels=["model"]), "entries")
        )
        for family, field_name in families:
            for model, per_model in models:
                family.add_metric([model], getattr(per_model, field_name))
            yield family
