"""zvec integration: search a wide candidate pool, then rerank it.

zvec 0.8.0 calls a Python reranker only when a query has several vector routes, gives it only
``topk`` candidates per route, and skips it for a single query. :func:`search` does the right
thing for one query and for several: it runs each query with ``candidates`` results, merges
them (deduplicated by id), reranks the pool with your reranker (cached or not) and returns
the best ``topn``.

Both :class:`~rerank_cache.QwenReRanker` and :class:`~rerank_cache.CachedReRanker` also work
directly as ``reranker=`` in ``Collection.query`` with several queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import check_topn
from .errors import ConfigurationError

__all__ = ["search"]


def _names(items: Sequence[Any]) -> list[str]:
    return sorted(str(item.name) for item in items)


def search(
    collection: Any,
    queries: Any,
    reranker: Any,
    *,
    candidates: int = 50,
    topn: int | None = None,
    filter: str | None = None,
    output_fields: Sequence[str] | None = None,
) -> list[Any]:
    """Search a zvec collection with a wide candidate pool, then rerank the pool.

    Args:
        collection: an open ``zvec.Collection``.
        queries: one ``zvec.Query`` or a list of them (one per vector route).
        reranker: a :class:`QwenReRanker` or :class:`CachedReRanker` (its query text is
            what documents are scored against; use ``with_query`` per user query).
        candidates: results fetched per query before reranking.
        topn: documents returned; defaults to the reranker's ``topn``.
        filter: a zvec filter expression applied to every query.
        output_fields: scalar fields to return; the reranker's ``rerank_field`` is added if
            missing (it is needed to score). None returns all fields.

    Returns:
        Up to ``topn`` zvec ``Doc``s, best first, with ``score`` set to DashScope's
        relevance score. No candidates gives ``[]``.

    Raises:
        ValueError: (a :class:`ConfigurationError`) ``candidates`` or ``topn`` is not a
            positive integer, a query names a field the collection does not have, or the
            reranker's ``rerank_field`` is not a scalar field of the collection.
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ConfigurationError(f"candidates must be a positive integer, not {candidates!r}")
    limit = reranker.topn if topn is None else check_topn(topn)
    routes = list(queries) if isinstance(queries, (list, tuple)) else [queries]
    if not routes:
        raise ConfigurationError("search needs at least one zvec.Query")
    schema = collection.schema
    scalar = _names(schema.fields)
    vector = _names(schema.vectors)
    field = reranker.rerank_field
    if field not in scalar:
        raise ConfigurationError(
            f"the reranker's rerank_field {field!r} is not a scalar field of collection "
            f"{schema.name!r}; its fields are: {', '.join(scalar) or '(none)'}"
        )
    for position, query in enumerate(routes):
        name = getattr(query, "field_name", None)
        if name is None:
            raise ConfigurationError(f"queries[{position}] is not a zvec.Query")
        if name not in vector and name not in scalar:
            raise ConfigurationError(
                f"queries[{position}] searches field {name!r}, which collection "
                f"{schema.name!r} does not have; its vector fields are: "
                f"{', '.join(vector) or '(none)'}"
            )
    fields = None
    if output_fields is not None:
        fields = list(output_fields)
        if field not in fields:
            fields.append(field)
    pools = [
        collection.query(query, topk=candidates, filter=filter, output_fields=fields)
        for query in routes
    ]
    if not any(pools):
        return []
    result: list[Any] = reranker.rerank(pools, limit)
    return result
