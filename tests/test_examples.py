"""Tests for rerank_cache.examples and scripts/demo.py."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_cache.examples import CONTENT_VECTOR, TITLE_VECTOR, build_collection, embed, load_corpus

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"

CORPUS = [
    {
        "id": "a",
        "title": "Caching search results",
        "content": "Cache popular search results so repeated queries are fast and cheap.",
    },
    {
        "id": "b",
        "title": "Sourdough starter",
        "content": "Feed the sourdough starter with flour and water every day.",
    },
    {
        "id": "c",
        "title": "Meteor showers",
        "content": "The Perseids light up the August sky with bright meteors.",
    },
]


def cosine(left: list[float], right: list[float]) -> float:
    """Cosine similarity of two vectors of equal length."""
    dot = sum(x * y for x, y in zip(left, right, strict=True))
    norms = math.sqrt(sum(x * x for x in left)) * math.sqrt(sum(y * y for y in right))
    return dot / norms


# -- corpus ----------------------------------------------------------------------------------


def test_corpus_loads_with_unique_ids_and_text() -> None:
    """The packaged corpus has at least 200 documents, unique ids and non-empty fields."""
    corpus = load_corpus()
    assert len(corpus) >= 200
    assert len({doc["id"] for doc in corpus}) == len(corpus)
    for doc in corpus:
        assert set(doc) == {"id", "title", "content"}
        assert re.fullmatch(r"doc-\d{3}", doc["id"])
        assert doc["title"].strip()
        assert 150 <= len(doc["content"]) <= 450


def test_corpus_texts_are_not_repeated() -> None:
    """No two documents share a title or a content text."""
    corpus = load_corpus()
    assert len({doc["title"] for doc in corpus}) == len(corpus)
    assert len({doc["content"] for doc in corpus}) == len(corpus)


def test_load_corpus_returns_fresh_lists() -> None:
    """Mutating one loaded corpus does not change the next one."""
    first = load_corpus()
    first[0]["content"] = "changed"
    first.clear()
    assert load_corpus()[0]["content"] != "changed"


# -- embed -----------------------------------------------------------------------------------


def test_embed_is_deterministic() -> None:
    """The same text always gives the same vector."""
    text = load_corpus()[0]["content"]
    assert embed(text) == embed(text)
    assert embed(text, dim=32) == embed(text, dim=32)


def test_embed_is_stable_across_processes() -> None:
    """The vector does not depend on the interpreter's hash seed."""
    code = "from rerank_cache.examples import embed; print(embed('Vector search with a cache'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{embed('Vector search with a cache')}\n"}


@pytest.mark.parametrize("dim", [8, 64, 300])
def test_embed_is_unit_length(dim: int) -> None:
    """Vectors have the requested dimension and an L2 norm of 1."""
    vector = embed("Caching search results keeps them fast and cheap.", dim=dim)
    assert len(vector) == dim
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-9)


@pytest.mark.parametrize("text", ["", "   ", "?!", "the and of"])
def test_embed_without_tokens_is_zero(text: str) -> None:
    """Text without content words embeds as the zero vector, not NaNs."""
    assert embed(text) == [0.0] * 64


def test_embed_ignores_case_and_punctuation() -> None:
    """Only lowercase word tokens matter."""
    assert embed("Cache, SEARCH results!") == embed("cache search results")


def test_similar_texts_are_closer_than_unrelated_ones() -> None:
    """Texts sharing words have a higher cosine similarity than unrelated texts."""
    query = embed("how do I cache search results so they stay fast and cheap")
    related = embed(CORPUS[0]["content"])
    for unrelated in (CORPUS[1]["content"], CORPUS[2]["content"]):
        assert cosine(query, related) > cosine(query, embed(unrelated)) + 0.2


@pytest.mark.parametrize("dim", [0, -3, 2.5, True])
def test_embed_rejects_bad_dimensions(dim: object) -> None:
    """A dimension that is not a positive int raises ValueError."""
    with pytest.raises(ValueError, match="dim"):
        embed("text", dim=dim)  # type: ignore[arg-type]


# -- build_collection ------------------------------------------------------------------------


def test_build_collection_holds_the_whole_corpus(tmp_path: Path) -> None:
    """The default collection stores every corpus document with its fields."""
    pytest.importorskip("zvec")
    corpus = load_corpus()
    collection = build_collection(tmp_path / "corpus")
    try:
        assert collection.stats.doc_count == len(corpus)
        fetched = collection.fetch([corpus[0]["id"]])[corpus[0]["id"]]
        assert fetched.field("title") == corpus[0]["title"]
        assert fetched.field("content") == corpus[0]["content"]
    finally:
        collection.close()


@pytest.mark.parametrize("doc", load_corpus()[::40], ids=lambda doc: doc["id"])
def test_own_content_vector_finds_the_document_first(tmp_path: Path, doc: dict[str, str]) -> None:
    """Querying content_vec with a document's own embedding returns that document first."""
    zvec = pytest.importorskip("zvec")
    collection = build_collection(tmp_path / "corpus")
    try:
        hits = collection.query(
            zvec.Query(field_name=CONTENT_VECTOR, vector=embed(doc["content"])), topk=5
        )
        assert hits[0].id == doc["id"]
        assert hits[0].score == pytest.approx(0.0, abs=1e-5)  # cosine distance to itself
        distances = [hit.score for hit in hits if hit.score is not None]
        assert len(distances) == len(hits)
        assert distances == sorted(distances)
    finally:
        collection.close()


def test_custom_corpus_and_dimension(tmp_path: Path) -> None:
    """A given corpus and dim are used for both vectors; the title vector finds titles."""
    zvec = pytest.importorskip("zvec")
    collection = build_collection(tmp_path / "nested" / "small", CORPUS, dim=16)
    try:
        assert collection.stats.doc_count == len(CORPUS)
        title_schema = collection.schema.vector(TITLE_VECTOR)
        assert title_schema is not None
        assert title_schema.dimension == 16
        hits = collection.query(
            zvec.Query(field_name=TITLE_VECTOR, vector=embed("Meteor showers", 16)), topk=3
        )
        assert hits[0].id == "c"
    finally:
        collection.close()


def test_collection_reopens_after_close(tmp_path: Path) -> None:
    """Closing flushes the collection, so zvec.open sees every document."""
    zvec = pytest.importorskip("zvec")
    path = tmp_path / "corpus"
    build_collection(path, CORPUS).close()
    reopened = zvec.open(str(path))
    try:
        assert reopened.stats.doc_count == len(CORPUS)
    finally:
        reopened.close()


def test_existing_path_is_refused(tmp_path: Path) -> None:
    """zvec will not create a collection where one already exists."""
    pytest.importorskip("zvec")
    path = tmp_path / "corpus"
    build_collection(path, CORPUS).close()
    with pytest.raises(ValueError, match="exists"):
        build_collection(path, CORPUS)


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ([CORPUS[0], dict(CORPUS[1], id="a")], "more than once"),
        ([{"id": "x", "title": "t"}], "content"),
    ],
)
def test_bad_corpus_is_rejected_before_creating(
    tmp_path: Path, corpus: list[dict[str, str]], message: str
) -> None:
    """Duplicate ids or missing fields raise ValueError and leave nothing on disk."""
    pytest.importorskip("zvec")
    with pytest.raises(ValueError, match=message):
        build_collection(tmp_path / "corpus", corpus)
    assert not (tmp_path / "corpus").exists()


def test_missing_zvec_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without zvec, build_collection says which extra to install."""
    monkeypatch.setitem(sys.modules, "zvec", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'rerank-cache[zvec]'")):
        build_collection(tmp_path / "corpus", CORPUS)


# -- the demo --------------------------------------------------------------------------------


def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    """Without an API key the demo uses the local server, prints 5 rows and cleans up."""
    pytest.importorskip("zvec")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL"}
    }
    env["TMPDIR"] = str(scratch)  # where the demo's temporary collection goes
    result = subprocess.run(
        [sys.executable, "-W", "error", str(DEMO)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "using the local offline DashScope server" in result.stdout
    assert "not real model scores" in result.stdout
    rows = re.findall(r"^\s*(\d+)\s+(doc-\d{3})\s+(\d\.\d{3})\s", result.stdout, re.MULTILINE)
    assert [int(rank) for rank, _, _ in rows] == [1, 2, 3, 4, 5]
    assert len({doc_id for _, doc_id, _ in rows}) == 5
    scores = [float(score) for _, _, score in rows]
    assert scores == sorted(scores, reverse=True)
    assert re.search(r"DashScope: 1 request\(s\), 30 documents, [1-9]\d* tokens", result.stdout)
    assert list(scratch.iterdir()) == []  # the temporary collection was removed
