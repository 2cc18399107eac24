"""Prometheus: ``stats --prometheus``, the proxy's renderer and ``StoreCollector`` agree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rerank_cache import QwenReRanker, ScoreCache
from rerank_cache.cli import main
from rerank_cache.metrics import StoreCollector, render_store_metrics
from rerank_cache.serve import metrics as serve_metrics
from rerank_cache.stores.stats import CacheStats, build_stats

from .helpers import cached, make_docs

NAMES = {
    "rerank_cache_hits": "counter",
    "rerank_cache_misses": "counter",
    "rerank_cache_documents_sent": "counter",
    "rerank_cache_tokens_billed": "counter",
    "rerank_cache_api_requests": "counter",
    "rerank_cache_entries": "gauge",
}


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, model) -> value, parsed by prometheus_client's own parser."""
    families = list(text_string_to_metric_families(text))
    assert {f.name: f.type for f in families} == NAMES
    assert all(f.documentation for f in families)
    return {(s.name, s.labels["model"]): s.value for f in families for s in f.samples}


def test_stats_prometheus_counts_every_model(
    cache: ScoreCache,
    make_reranker: Callable[..., QwenReRanker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    docs = make_docs(6)
    for _ in range(2):
        cached(make_reranker, cache).rerank([docs])
    cached(make_reranker, cache, model="qwen3-rerank").rerank([docs[:2]])
    expected = cache.stats()
    cache.close()
    assert main(["--cache-dir", str(cache.directory), "stats", "--prometheus"]) == 0
    text = capsys.readouterr().out
    found = samples(text)
    assert found[("rerank_cache_hits_total", "gte-rerank-v2")] == 6
    assert found[("rerank_cache_misses_total", "gte-rerank-v2")] == 6
    assert found[("rerank_cache_misses_total", "qwen3-rerank")] == 2
    assert found[("rerank_cache_entries", "qwen3-rerank")] == 2
    for model, m in expected.models.items():
        assert found[("rerank_cache_tokens_billed_total", model)] == m.tokens_billed > 0
        assert found[("rerank_cache_api_requests_total", model)] == m.api_requests
        assert found[("rerank_cache_documents_sent_total", model)] == m.documents_sent
    assert "# TYPE rerank_cache_hits_total counter" in text.splitlines()


def test_stats_prometheus_on_an_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No series, but every family is declared (a scrape of a new cache is not an error)."""
    assert main(["--cache-dir", str(tmp_path / "none"), "stats", "--prometheus"]) == 0
    text = capsys.readouterr().out
    assert samples(text) == {}
    assert main(["--cache-dir", str(tmp_path), "stats", "--prometheus", "--json"]) == 2


def test_label_values_are_escaped() -> None:
    model = 'odd "model" \\ with\nnewline'
    stats = build_stats(
        "x", {model: Counter(hits=1)}, {model: 1}, expired=0, size=0, oldest=None, newest=None
    )
    lines = render_store_metrics(stats)
    assert 'rerank_cache_hits_total{model="odd \\"model\\" \\\\ with\\nnewline"} 1' in lines
    assert samples("\n".join(lines) + "\n")[("rerank_cache_hits_total", model)] == 1


def test_the_proxy_uses_the_same_renderer() -> None:
    assert serve_metrics.render_store_metrics is render_store_metrics


def test_store_collector_matches_stats_prometheus(
    cache: ScoreCache,
    make_reranker: Callable[..., QwenReRanker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = CollectorRegistry()
    registry.register(StoreCollector(cache))
    assert samples(generate_latest(registry).decode()) == {}
    docs = make_docs(4)
    for _ in range(3):
        cached(make_reranker, cache).rerank([docs])
    scraped = samples(generate_latest(registry).decode())
    assert scraped[("rerank_cache_hits_total", "gte-rerank-v2")] == 8  # pending counts too
    cache.close()
    assert main(["--cache-dir", str(cache.directory), "stats", "--prometheus"]) == 0
    assert samples(capsys.readouterr().out) == scraped


def test_registering_the_collector_does_not_read_the_store(tmp_path: Path) -> None:
    class Unreadable(ScoreCache):
        def stats(self) -> CacheStats:
            raise AssertionError("read at registration")

    with Unreadable(tmp_path / "s") as store:
        CollectorRegistry().register(StoreCollector(store))
