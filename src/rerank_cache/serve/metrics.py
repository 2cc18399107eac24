"""Prometheus text exposition (format 0.0.4) for the proxy: store counters and requests.

The store's counters (hits, misses, documents sent, tokens billed, API requests) and entries
come from :meth:`ScoreStore.stats`, so they cover every process sharing the store; request
counts and latency histograms cover this proxy process.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence

from rerank_cache import CacheStats

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "RequestMetrics", "render_store_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency bucket bounds in seconds: a hit takes milliseconds, a miss DashScope's 0.1-1 s,
#: a retried miss up to the request timeout.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

_PREFIX = "rerank_cache_"

#: (metric, CacheStats/ModelStats field, help) for the store's counters.
_STORE_COUNTERS = (
    ("hits_total", "hits", "Pairs looked up and found in the score store."),
    ("misses_total", "misses", "Pairs looked up and not found in the score store."),
    ("documents_sent_total", "documents_sent", "Documents sent to DashScope."),
    ("tokens_billed_total", "tokens_billed", "Tokens DashScope billed."),
    ("api_requests_total", "api_requests", "Successful requests to DashScope."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {_PREFIX}{name} {help_text}", f"# TYPE {_PREFIX}{name} {kind}"]


def render_store_metrics(stats: CacheStats) -> list[str]:
    """The store's counters and entries, one series per model."""
    lines: list[str] = []
    models = sorted(stats.models.items())
    for name, field_name, help_text in _STORE_COUNTERS:
        lines += _family(name, "counter", help_text)
        for model, per_model in models:
            value = getattr(per_model, field_name)
            lines.append(f"{_PREFIX}{name}{_labels([('model', model)])} {_number(value)}")
    lines += _family("entries", "gauge", "Scores held in the store.")
    for model, per_model in models:
        lines.append(f"{_PREFIX}entries{_labels([('model', model)])} {per_model.entries}")
    return lines


class RequestMetrics:
    """Request counts and latency histograms by route and status. Thread-safe.

    Args:
        buckets: histogram bucket upper bounds in seconds, ascending.
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be ascending and distinct")
        self._buckets = tuple(buckets)
        self._lock = threading.Lock()
        # (route, status) -> per-bucket counts (last: +Inf), sum of seconds
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request and its duration."""
        series = (route, str(status))
        slot = bisect.bisect_left(self._buckets, seconds)
        with self._lock:
            counts = self._counts.get(series)
            if counts is None:
                counts = self._counts[series] = [0] * (len(self._buckets) + 1)
                self._sums[series] = 0.0
            counts[slot] += 1
            self._sums[series] += seconds

    def requests(self) -> Mapping[tuple[str, str], int]:
        """Requests counted so far by (route, status)."""
        with self._lock:
            return {series: sum(counts) for series, counts in self._counts.items()}

    def render(self) -> list[str]:
        """The request counter and the latency histogram in exposition format."""
        with self._lock:
            snapshot = {s: (list(c), self._sums[s]) for s, c in sorted(self._counts.items())}
        lines = _family("proxy_requests_total", "counter", "HTTP requests answered.")
        for (route, status), (counts, _) in snapshot.items():
            labels = _labels([("route", route), ("status", status)])
            lines.append(f"{_PREFIX}proxy_requests_total{labels} {sum(counts)}")
        name = "proxy_request_duration_seconds"
        lines += _family(name, "histogram", "Time to answer an HTTP request.")
        for (route, status), (counts, total) in snapshot.items():
            running = 0
            for bound, count in zip((*self._buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                labels = _labels([("route", route), ("status", status), ("le", le)])
                lines.append(f"{_PREFIX}{name}_bucket{labels} {running}")
            labels = _labels([("route", route), ("status", status)])
            lines.append(f"{_PREFIX}{name}_sum{labels} {_number(total)}")
            lines.append(f"{_PREFIX}{name}_count{labels} {running}")
        return lines
