"""Prometheus metrics of the proxy: request counts and latency histograms of this process.

The store's counters and entries are rendered by :mod:`rerank_cache.metrics` (the same
renderer as ``rerank-cache stats --prometheus``) and re-exported here.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence

from ..metrics import (
    CONTENT_TYPE,
    PREFIX,
    family_header,
    format_number,
    label_text,
    render_store_metrics,
)

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "RequestMetrics", "render_store_metrics"]

#: Latency bucket bounds in seconds: a hit takes milliseconds, a miss DashScope's 0.1-1 s,
#: a retried miss up to the request timeout.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


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
        lines = family_header("proxy_requests_total", "counter", "HTTP requests answered.")
        for (route, status), (counts, _) in snapshot.items():
            labels = label_text([("route", route), ("status", status)])
            lines.append(f"{PREFIX}proxy_requests_total{labels} {sum(counts)}")
        name = "proxy_request_duration_seconds"
        lines += family_header(name, "histogram", "Time to answer an HTTP request.")
        for (route, status), (counts, total) in snapshot.items():
            running = 0
            for bound, count in zip((*self._buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else format_number(bound)
                labels = label_text([("route", route), ("status", status), ("le", le)])
                lines.append(f"{PREFIX}{name}_bucket{labels} {running}")
            labels = label_text([("route", route), ("status", status)])
            lines.append(f"{PREFIX}{name}_sum{labels} {format_number(total)}")
            lines.append(f"{PREFIX}{name}_count{labels} {running}")
        return lines
