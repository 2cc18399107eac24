"""zvec integration: a real collection, zvec's own call shape, and the search helper."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rerank_cache import CachedReRanker, ConfigurationError, QwenReRanker, ScoreCache
from rerank_cache.examples import CONTENT_VECTOR, TITLE_VECTOR, build_collection, embed
from rerank_cache.testing import DashScopeServer, score
from rerank_cache.zvec import search

zvec = pytest.importorskip("zvec")

QUESTION = "how do I cache search results so repeated queries are cheap"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The sample corpus (240 documents, deterministic vectors) in a real zvec collection."""
    col = build_collection(tmp_path_factory.mktemp("zvec") / "corpus")
    yield col
    col.close()


@pytest.fixture
def cached_reranker(
    make_reranker: Callable[..., QwenReRanker], cache: ScoreCache
) -> CachedReRanker:
    """A CachedReRanker for QUESTION over the tmp-dir cache."""
    return CachedReRanker(make_reranker(QUESTION), cache)


def queries(*fields: str) -> list[Any]:
    return [zvec.Query(field_name=f, vector=embed(QUESTION)) for f in fields]


def assert_dashscope_scores(docs: list[Any], query: str = QUESTION) -> None:
    assert docs
    assert all(type(d) is zvec.Doc for d in docs)
    for d in docs:
        assert d.score == score(query, d.field("content"))
    assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)


def test_reranker_in_collection_query(
    collection: Any, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """QwenReRanker works as reranker= in Collection.query with several queries."""
    reranker = make_reranker(QUESTION)
    hits = collection.query(queries(CONTENT_VECTOR, TITLE_VECTOR), topk=7, reranker=reranker)
    assert len(hits) == 7
    assert_dashscope_scores(hits)
    (req,) = server.requests_log
    assert 7 <= len(req.documents) <= 14  # zvec passes topk per route, merged by id


def test_cached_reranker_in_collection_query(
    collection: Any, cached_reranker: CachedReRanker, server: DashScopeServer
) -> None:
    """CachedReRanker works as reranker= too, and the second query sends nothing."""
    first, second = (
        collection.query(queries(CONTENT_VECTOR, TITLE_VECTOR), topk=5, reranker=cached_reranker)
        for _ in range(2)
    )
    assert [(d.id, d.score) for d in first] == [(d.id, d.score) for d in second]
    assert server.stats.requests == 1
    assert_dashscope_scores(second)


def test_search_single_query_reranks_wide_pool(
    collection: Any, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """search reranks for a single query (which zvec skips), over `candidates` results."""
    out = search(
        collection, queries(CONTENT_VECTOR)[0], make_reranker(QUESTION, topn=5), candidates=40
    )
    assert len(out) == 5
    assert_dashscope_scores(out)
    (req,) = server.requests_log
    assert len(req.documents) == 40
    # Nothing in the pool outscores what was returned.
    pool = collection.query(queries(CONTENT_VECTOR)[0], topk=40)
    best_possible = sorted((score(QUESTION, d.field("content")) for d in pool), reverse=True)
    assert [d.score for d in out] == best_possible[:5]


def test_search_several_queries_merges_by_id(
    collection: Any, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """Several routes are merged (deduplicated by id) before one rerank."""
    routes = queries(CONTENT_VECTOR, TITLE_VECTOR)
    out = search(collection, routes, make_reranker(QUESTION), candidates=25, topn=8)
    assert len(out) == 8
    assert len({d.id for d in out}) == 8
    ids = {d.id for q in routes for d in collection.query(q, topk=25)}
    (req,) = server.requests_log
    assert len(req.documents) == len(ids) > 25


def test_search_with_cache_and_filter_and_output_fields(
    collection: Any, cached_reranker: CachedReRanker, server: DashScopeServer
) -> None:
    """A cached reranker, a filter and output_fields (the rerank field is added) all work."""
    out, again = (
        search(
            collection,
            queries(CONTENT_VECTOR),
            cached_reranker,
            candidates=30,
            topn=3,
            output_fields=["title"],
            filter="title != 'nothing'",
        )
        for _ in range(2)
    )
    assert len(out) == 3
    assert all(d.field("title") and d.field("content") for d in out)
    assert [d.id for d in again] == [d.id for d in out]
    assert server.stats.requests == 1


def test_search_errors_are_clear(
    collection: Any, make_reranker: Callable[..., QwenReRanker]
) -> None:
    """Wrong field names and bad numbers are ValueErrors naming what exists."""
    with pytest.raises(ConfigurationError, match=r"rerank_field 'body'.*content, title"):
        search(collection, queries(CONTENT_VECTOR), make_reranker(QUESTION, rerank_field="body"))
    with pytest.raises(ConfigurationError, match=r"'nope_vec'.*content_vec, title_vec"):
        search(
            collection,
            [zvec.Query(field_name="nope_vec", vector=embed("x"))],
            make_reranker(QUESTION),
        )
    with pytest.raises(ValueError, match="candidates"):
        search(collection, queries(CONTENT_VECTOR), make_reranker(QUESTION), candidates=0)
    with pytest.raises(ValueError, match="topn"):
        search(collection, queries(CONTENT_VECTOR), make_reranker(QUESTION), topn=-1)
    with pytest.raises(ConfigurationError, match="at least one"):
        search(collection, [], make_reranker(QUESTION))


def test_search_empty_pool_returns_empty(
    collection: Any, make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """A filter that matches nothing gives [] and sends nothing."""
    out = search(
        collection,
        queries(CONTENT_VECTOR),
        make_reranker(QUESTION),
        filter="title = 'no such title'",
    )
    assert out == []
    assert server.stats.requests == 0


def test_with_query_per_user_query(
    collection: Any,
    make_reranker: Callable[..., QwenReRanker],
    cache: ScoreCache,
) -> None:
    """One base reranker serves many user queries through with_query."""
    base = CachedReRanker(make_reranker("placeholder"), cache)
    for question in ("telescope for the moon", "tomato seedlings"):
        out = search(
            collection,
            [zvec.Query(field_name=CONTENT_VECTOR, vector=embed(question))],
            base.with_query(question),
            candidates=20,
            topn=3,
        )
        assert_dashscope_scores(out, question)
