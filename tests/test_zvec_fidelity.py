"""What zvec's own reranker tests check, held for both rerankers; and the zvec edges: documents
without text, RerankFunction at run time and for mypy, the 0.8.0 positional order.

Every behaviour zvec's ``tests/test_reranker.py`` checks of its ``QwenReRanker`` through public
names is checked here against :class:`QwenReRanker` and :class:`CachedReRanker`, through the
real SDK and the local DashScope server. Where zvec behaves differently on purpose (errors from
DashScope, ``top_n``), the test pins our behaviour and docs/migrating.md lists the difference.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rerank_cache import (
    APIError,
    CachedReRanker,
    ConfigurationError,
    Doc,
    NoDocumentsError,
    QwenReRanker,
    RetryPolicy,
    ScoreCache,
    TransportError,
)
from rerank_cache.testing import DashScopeServer, score

from .conftest import API_KEY, SleepRecorder

zvec = pytest.importorskip("zvec")

ROOT = Path(__file__).resolve().parents[1]

Build = Callable[..., Any]


@pytest.fixture(params=["plain", "cached"])
def build(
    request: pytest.FixtureRequest,
    server: DashScopeServer,
    sleeps: SleepRecorder,
    tmp_path: Path,
) -> Iterator[Build]:
    """Build a QwenReRanker, or the same wrapped in a CachedReRanker, on the local server."""
    stores: list[ScoreCache] = []

    def make(query: str | None = "test", **kwargs: Any) -> Any:
        kwargs.setdefault("rerank_field", "content")
        kwargs.setdefault("base_url", server.base_url)
        kwargs.setdefault("retry", RetryPolicy(sleep=sleeps, backoff_base=0.01))
        reranker = QwenReRanker(query, **kwargs)
        if request.param == "plain":
            return reranker
        store = ScoreCache(tmp_path / f"cache-{len(stores)}")
        stores.append(store)
        return CachedReRanker(reranker, store)

    yield make
    for store in stores:
        store.close()


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


# -- construction and properties (zvec: test_init_*, test_*_property) ------------------------


def test_no_query_is_value_error_naming_the_query(build: Build) -> None:
    """A missing query raises ValueError with zvec's wording."""
    with pytest.raises(ValueError, match="Query is required for QwenReRanker"):
        build(None, api_key="test_key")


def test_no_api_key_is_value_error_before_anything_else(build: Build) -> None:
    """With no key anywhere, QwenReRanker(query=...) alone raises zvec's key error."""
    assert "DASHSCOPE_API_KEY" not in os.environ
    with pytest.raises(ValueError, match="DashScope API key is required"):
        QwenReRanker(query="test")
    with pytest.raises(ValueError, match="DashScope API key is required"):
        build("test")


def test_key_from_the_environment_is_used(
    build: Build, server: DashScopeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DASHSCOPE_API_KEY is read when no api_key is given, and is the key sent."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    reranker = build("test", rerank_field="content")
    assert (reranker.query, reranker.rerank_field) == ("test", "content")
    reranker.rerank({"vector1": [zvec.Doc(id="1", fields={"content": "Document 1"})]})
    assert [r.api_key_fingerprint for r in server.requests_log] == [fingerprint(API_KEY)]


def test_explicit_key_wins_over_the_environment(
    build: Build, server: DashScopeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An api_key argument is the key sent, whatever the environment holds."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-from-the-environment")
    reranker = build("test", api_key=API_KEY)
    reranker.rerank([[zvec.Doc(id="1", fields={"content": "Document 1"})]])
    assert [r.api_key_fingerprint for r in server.requests_log] == [fingerprint(API_KEY)]


def test_properties(build: Build) -> None:
    """model (default gte-rerank-v2, any name accepted), query, topn and rerank_field."""
    assert build("test", api_key="k").model == "gte-rerank-v2"
    assert build("test", api_key="k", model="custom-model").model == "custom-model"
    reranker = build("test query", api_key="k", topn=5, rerank_field="title")
    assert (reranker.query, reranker.topn, reranker.rerank_field) == ("test query", 5, "title")


# -- rerank() (zvec: test_rerank_*) ----------------------------------------------------------


@pytest.mark.parametrize("empty", [{}, []])
def test_empty_input_gives_empty_list(
    build: Build, server: DashScopeServer, empty: dict[str, Any] | list[Any]
) -> None:
    """rerank({}) and rerank([]) return [] and send nothing."""
    assert build(api_key=API_KEY).rerank(empty) == []
    assert server.stats.requests == 0


@pytest.mark.parametrize(
    "docs",
    [
        [zvec.Doc(id="1")],
        [zvec.Doc(id="1", fields={"content": ""}), zvec.Doc(id="2", fields={"content": "   "})],
    ],
    ids=["field-missing", "blank"],
)
def test_no_text_is_no_documents_error(
    build: Build, server: DashScopeServer, docs: list[Any]
) -> None:
    """Documents whose field is missing or blank raise zvec's ValueError, sending nothing."""
    with pytest.raises(ValueError, match="No documents to rerank") as info:
        build(api_key=API_KEY).rerank({"vector1": docs})
    assert isinstance(info.value, NoDocumentsError)
    assert server.stats.requests == 0


@pytest.mark.parametrize("shape", ["dict", "list"])
def test_success_returns_scored_docs_best_first(
    build: Build, server: DashScopeServer, shape: str
) -> None:
    """Both zvec call shapes: zvec Docs come back best first with DashScope's scores, and
    the request carries the model, the query and each text."""
    docs = [
        zvec.Doc(id="1", fields={"content": "Document 1"}),
        zvec.Doc(id="2", fields={"content": "test query document 2"}),
    ]
    reranker = build("test query", api_key=API_KEY, topn=2)
    out = reranker.rerank({"vector1": docs}) if shape == "dict" else reranker.rerank([docs], 2)
    assert [d.id for d in out] == ["2", "1"]
    assert all(type(d) is zvec.Doc for d in out)
    assert [d.score for d in out] == [
        score("test query", "test query document 2"),
        score("test query", "Document 1"),
    ]
    (req,) = server.requests_log
    assert (req.model, req.query, req.return_documents) == ("gte-rerank-v2", "test query", False)
    assert list(req.documents) == ["Document 1", "test query document 2"]


def test_topn_cuts_the_result(build: Build) -> None:
    """At most topn documents come back; rerank's topn overrides the constructor's."""
    docs = [zvec.Doc(id=str(i), fields={"content": f"Doc {i} test"}) for i in range(5)]
    reranker = build(api_key=API_KEY, topn=2)
    assert len(reranker.rerank({"v": docs})) == 2
    assert len(reranker.rerank([docs], 4)) == 4


def test_duplicates_across_lists_are_sent_once(build: Build, server: DashScopeServer) -> None:
    """The same document in two result lists is sent and returned once."""
    doc1 = zvec.Doc(id="1", fields={"content": "Document 1"})
    out = build(api_key=API_KEY, topn=5).rerank({"vector1": [doc1], "vector2": [doc1]})
    assert [d.id for d in out] == ["1"]
    (req,) = server.requests_log
    assert list(req.documents) == ["Document 1"]


def test_error_status_raises_api_error_and_caches_nothing(
    build: Build, server: DashScopeServer
) -> None:
    """A 400 raises APIError (zvec: ValueError — a documented difference); nothing is kept,
    so the next call asks again."""
    reranker = build(api_key=API_KEY)
    docs = {"vector1": [zvec.Doc(id="1", fields={"content": "Document 1"})]}
    server.fail_next(400, message="Invalid request")
    with pytest.raises(APIError) as info:
        reranker.rerank(docs)
    assert (info.value.status, info.value.code) == (400, "InvalidParameter")
    assert not isinstance(info.value, ValueError)
    assert [d.id for d in reranker.rerank(docs)] == ["1"]
    assert server.stats.requests == 2


def test_failed_call_raises_transport_error(build: Build, server: DashScopeServer) -> None:
    """A call that gets no answer raises TransportError (zvec: RuntimeError — a documented
    difference)."""
    reranker = build(api_key=API_KEY, retry=RetryPolicy(max_attempts=1, sleep=lambda s: None))
    server.drop_next(times=2)  # the SDK retries a dropped connection once by itself
    with pytest.raises(TransportError) as info:
        reranker.rerank({"vector1": [zvec.Doc(id="1", fields={"content": "Document 1"})]})
    assert not isinstance(info.value, RuntimeError)


def test_relevant_documents_rank_first(build: Build) -> None:
    """The shape of zvec's integration test: at most topn results, positive numeric scores in
    descending order, a machine-learning document on top."""
    texts = {
        "1": "Machine learning is a subset of artificial intelligence that learns from data.",
        "2": "The weather is nice today with clear skies and sunshine.",
        "3": "Deep learning is a branch of machine learning using neural networks.",
        "4": "Python is a popular language for data science and machine learning.",
        "5": "A recipe for chocolate cake includes flour, sugar, eggs and cocoa.",
    }
    docs = [zvec.Doc(id=i, score=0.5, fields={"content": t}) for i, t in texts.items()]
    out = build("What is machine learning?", api_key=API_KEY, topn=3).rerank(
        {"vector1": docs[:3], "vector2": docs[3:]}
    )
    assert 0 < len(out) <= 3
    assert all(isinstance(d.score, float) and d.score > 0 for d in out)
    assert [d.score for d in out] == sorted((d.score for d in out), reverse=True)
    assert out[0].id in {"1", "3", "4"}


# -- item: only non-blank strings are text ---------------------------------------------------


NOT_TEXT: list[Any] = [None, {}, 0, 7, 1.5, True, False, b"bytes", ["a", "list"], ("t",)]


@pytest.mark.parametrize("doc_type", ["zvec", "own"])
def test_only_non_blank_strings_are_sent(
    build: Build, server: DashScopeServer, doc_type: str
) -> None:
    """A missing field, {} (zvec's Doc.field() for a document without fields), None,
    numbers, booleans, bytes, lists and tuples are skipped; only strings are sent."""
    make = zvec.Doc if doc_type == "zvec" else Doc
    docs = [make(id="bare")] + [
        make(id=f"n{i}", fields={"content": value}) for i, value in enumerate(NOT_TEXT)
    ]
    text = make(id="text", fields={"content": "  a real text  "})
    reranker = build(api_key=API_KEY)
    with pytest.raises(NoDocumentsError):
        reranker.rerank([docs])
    assert server.stats.requests == 0
    assert [d.id for d in reranker.rerank([[*docs, text]])] == ["text"]
    (req,) = server.requests_log
    assert list(req.documents) == ["a real text"]


def test_a_zvec_doc_without_fields_reads_as_empty_dict() -> None:
    """The zvec fact the rule above guards against: field() of a bare Doc is {} (not None)."""
    assert zvec.Doc(id="1").field("content") == {}


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The sample corpus in a real zvec collection."""
    from rerank_cache.examples import build_collection

    col = build_collection(tmp_path_factory.mktemp("fidelity") / "corpus")
    yield col
    col.close()


def routes(question: str) -> list[Any]:
    from rerank_cache.examples import CONTENT_VECTOR, TITLE_VECTOR, embed

    return [
        zvec.Query(field_name=CONTENT_VECTOR, vector=embed(question)),
        zvec.Query(field_name=TITLE_VECTOR, vector=embed(question)),
    ]


def test_collection_query_without_fields_sends_nothing(
    build: Build, server: DashScopeServer, collection: Any
) -> None:
    """Collection.query(..., output_fields=[]) hands over documents without fields: we raise
    NoDocumentsError (a ValueError, as zvec's reranker does) and send nothing."""
    reranker = build("vector database", api_key=API_KEY)
    with pytest.raises(ValueError, match="No documents to rerank") as info:
        collection.query(routes("vector database"), topk=5, reranker=reranker, output_fields=[])
    assert isinstance(info.value, NoDocumentsError)
    assert server.stats.requests == 0


def test_collection_query_merges_routes_and_scores_each_document_once(
    build: Build, server: DashScopeServer, collection: Any
) -> None:
    """Through Collection.query with two routes: one request, each id once, best first."""
    question = "vector database embeddings"
    out = collection.query(routes(question), topk=5, reranker=build(question, api_key=API_KEY))
    ids = [d.id for d in out]
    assert 0 < len(ids) <= 5
    assert len(ids) == len(set(ids))
    assert [d.score for d in out] == [score(question, d.field("content")) for d in out]
    (req,) = server.requests_log
    assert len(req.documents) == len(set(req.documents))


# -- item: RerankFunction at run time and for mypy -------------------------------------------


def test_both_rerankers_are_rerank_functions(build: Build) -> None:
    """isinstance and issubclass against zvec's RerankFunction (and its ReRanker alias)."""
    from zvec.extension import ReRanker, RerankFunction

    assert isinstance(build(api_key=API_KEY), RerankFunction)
    assert issubclass(QwenReRanker, ReRanker)
    assert issubclass(CachedReRanker, RerankFunction)


def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


ZVEC_LOADED = "sorted(m for m in sys.modules if m == 'zvec' or m.startswith('zvec.'))"


@pytest.mark.parametrize("zvec_first", [True, False])
def test_rerank_function_whichever_is_imported_first(zvec_first: bool) -> None:
    """zvec imported before or after rerank_cache: both classes are RerankFunctions, and
    importing rerank_cache alone loads no zvec module."""
    imports = (
        "import zvec.extension as z\nimport rerank_cache\nloaded = []\n"
        if zvec_first
        else f"import rerank_cache\nloaded = {ZVEC_LOADED}\nimport zvec.extension as z\n"
    )
    out = run_python(
        "import sys\n" + imports + "from rerank_cache import CachedReRanker, QwenReRanker\n"
        "r = QwenReRanker('q', rerank_field='content', api_key='k')\n"
        "print(loaded, isinstance(r, z.RerankFunction), issubclass(CachedReRanker, z.ReRanker))\n"
    )
    assert out == "[] True True"


def test_import_works_without_zvec() -> None:
    """With zvec unavailable, rerank_cache imports and reranks, and imports no zvec module."""
    out = run_python(
        f"""
        import sys
        sys.modules['zvec'] = None  # as if it were not installed
        from rerank_cache import Doc, QwenReRanker
        from rerank_cache.testing import DashScopeServer
        with DashScopeServer() as server:
            r = QwenReRanker('q', rerank_field='c', api_key='k', base_url=server.base_url)
            print(r.rerank([[Doc('a', fields={{'c': 'q text'}})]])[0].id,
                  [m for m in {ZVEC_LOADED} if sys.modules[m] is not None])
        """
    )
    assert out == "a []"


def test_mypy_accepts_both_rerankers_in_collection_query(tmp_path: Path) -> None:
    """mypy --strict accepts QwenReRanker(...) and .cached() as Collection.query(reranker=...)
    and still rejects what zvec's type does not allow."""
    user = tmp_path / "user_code.py"
    user.write_text(
        textwrap.dedent(
            """
            from zvec import Collection, Doc, Query
            from zvec.extension import RerankFunction

            from rerank_cache import QwenReRanker


            def search(collection: Collection, queries: list[Query]) -> list[Doc]:
                plain = QwenReRanker(query="q", rerank_field="content")
                newer = QwenReRanker("q", "content", "my-finetuned-rerank")
                hits = collection.query(queries, topk=5, reranker=plain)
                hits += collection.query(queries, topk=5, reranker=newer.cached())
                as_base: RerankFunction = plain.cached()
                del as_base
                return hits


            collection_query_rejects: Collection
            collection_query_rejects.query(reranker="not a reranker")
            """
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            "--no-incremental",
            str(user),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},  # this checkout, not an install
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "user_code.py:19:" in lines[0], lines
    assert '"reranker"' in lines[0], lines


# -- item: zvec 0.8.0's positional order with any model name ---------------------------------


def test_zvec_08_order_takes_any_model_name() -> None:
    """(query, rerank_field, model[, api_key]) positionally, with a model no table knows."""
    r = QwenReRanker("q", "content", "my-finetuned-rerank", API_KEY)
    assert (r.topn, r.rerank_field, r.model) == (10, "content", "my-finetuned-rerank")
    r = QwenReRanker("q", "content", "my-finetuned-rerank", api_key=API_KEY, topn=3)
    assert (r.topn, r.rerank_field, r.model) == (3, "content", "my-finetuned-rerank")


def test_older_order_takes_any_model_name() -> None:
    """(query, topn, rerank_field, model, api_key) positionally, any model name."""
    r = QwenReRanker("q", 4, "title", "my-finetuned-rerank", API_KEY)
    assert (r.topn, r.rerank_field, r.model) == (4, "title", "my-finetuned-rerank")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("q", "title"), {"rerank_field": "content"}),  # 0.8.0 order, and rerank_field=
        (("q", "title", "my-model"), {"model": "other"}),
        (("q", 5, "title"), {"rerank_field": "content"}),  # older order, and rerank_field=
        (("q", 5), {"topn": 3}),
        (("q", "title", "m", "sk-positional-secret"), {"api_key": "sk-keyword-secret"}),
    ],
)
def test_an_argument_given_twice_is_refused(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A value both by position and by keyword is refused (its order cannot be known),
    without echoing any value — one may be the API key."""
    kwargs.setdefault("api_key", API_KEY)
    with pytest.raises(ConfigurationError, match=r"given twice.*keywords") as info:
        QwenReRanker(*args, **kwargs)
    assert "secret" not in str(info.value)


def test_too_many_positional_arguments_is_type_error() -> None:
    """More positions than the order has is a TypeError, as Python gives for a signature."""
    with pytest.raises(TypeError, match="at most 4 positional"):
        QwenReRanker("q", "content", "model", API_KEY, "extra")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="at most 5 positional"):
        QwenReRanker("q", 3, "content", "model", API_KEY, "extra")  # type: ignore[call-overload]
