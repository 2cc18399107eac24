"""Cache keys: pinned format, determinism, no collisions across field boundaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rerank_cache.keys import KEY_VERSION, KeyBuilder, model_of, query_tag, score_key

text = st.text(max_size=40)
maybe_text = st.none() | text


def test_golden_key() -> None:
    """The key format is pinned: changing it must bump KEY_VERSION (old entries then miss)."""
    assert KEY_VERSION == 3
    assert (
        score_key(
            "gte-rerank-v2",
            None,
            "what is a vector database",
            "zvec is an in-process vector database",
        )
        == "3:gte-rerank-v2:439f468e4bb70b11419244a61c5a2bfbe7ddb79b"
    )
    assert (
        score_key("qwen3-rerank", "Rank for RAG.", "向量", "doc")
        == "3:qwen3-rerank:124cbc1de2633aee31ccedaedcd7fbcee4aabb5e"
    )


def test_key_holds_no_plaintext() -> None:
    """Neither the query nor the document appears in the key."""
    key = score_key("m", None, "secret query", "secret document")
    assert "secret" not in key
    assert model_of(key) == "m"


@settings(max_examples=200, deadline=None)
@given(text, maybe_text, text, text)
def test_builder_matches_function_and_is_deterministic(
    model: str, instruct: str | None, query: str, doc: str
) -> None:
    """KeyBuilder and score_key agree, and the same inputs always give the same key."""
    kb = KeyBuilder(model, instruct, query)
    assert kb.key(doc) == score_key(model, instruct, query, doc)
    assert kb.keys([doc, doc]) == [kb.key(doc)] * 2
    assert score_key(model, instruct, query, doc) == score_key(model, instruct, query, doc)


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(text, maybe_text, text, text),
    st.tuples(text, maybe_text, text, text),
)
def test_distinct_inputs_distinct_keys(
    a: tuple[str, str | None, str, str], b: tuple[str, str | None, str, str]
) -> None:
    """Different (model, instruct, query, doc) tuples never share a key."""
    if a != b:
        assert score_key(*a) != score_key(*b)


@settings(max_examples=200, deadline=None)
@given(text, text, text, st.integers(min_value=0, max_value=40))
def test_moving_text_across_boundaries_changes_key(q: str, d: str, extra: str, cut: int) -> None:
    """Moving characters between query and instruct, or query and document, changes the key."""
    joined = q + d
    cut = min(cut, len(joined))
    moved_q, moved_d = joined[:cut], joined[cut:]
    if (moved_q, moved_d) != (q, d):
        assert score_key("m", None, q, d) != score_key("m", None, moved_q, moved_d)
    assert score_key("m", extra, q, d) != score_key("m", None, extra + q, d)
    assert score_key("m", "", q, d) != score_key("m", None, q, d)


def test_model_of_rejects_foreign_keys() -> None:
    """Keys not in the current format have no model."""
    assert model_of("0:m:" + "0" * 32) is None
    assert model_of("1:m:" + "0" * 32) is None  # version 1, before the query tag
    assert model_of("nonsense") is None
    assert model_of("1:a:b:" + "f" * 32) is None  # version 1, before the scorer was keyed
    assert model_of("2:a:b:" + "f" * 32) is None  # version 2, the prefix hashed per document
    assert model_of("3:a:b:" + "f" * 32) is None  # too few digits for version 3
    assert model_of("3:a:b:" + "f" * 40) == "a:b"


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40), maybe_text, text, st.lists(text, min_size=1, max_size=5))
def test_query_tag_is_shared_by_one_calls_keys(
    model: str, instruct: str | None, query: str, docs: list[str]
) -> None:
    """Every key of one (model, instruct, query) has the same tag: the key's hash starts with it."""
    keys = [score_key(model, instruct, query, d) for d in docs]
    tags = {query_tag(k) for k in keys}
    assert len(tags) == 1
    (tag,) = tags
    assert tag is not None
    assert len(tag) == 8
    assert all(k[-40:].startswith(tag) for k in keys)


def test_query_tag_differs_between_queries_and_rejects_foreign_keys() -> None:
    """Different queries, instructs or models get different tags; foreign keys get none."""
    tags = {
        query_tag(score_key("m", None, "q", "d")),
        query_tag(score_key("m", None, "q2", "d")),
        query_tag(score_key("m", "", "q", "d")),
        query_tag(score_key("m2", None, "q", "d")),
    }
    assert len(tags) == 4
    assert query_tag("nonsense") is None
    assert query_tag("1:m:" + "0" * 32) is None
