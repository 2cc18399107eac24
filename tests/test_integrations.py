"""Framework adapters: LangChain's and LlamaIndex's DashScopeRerank, swapped for cached ones.

Every test talks to the local DashScope server through the real SDK and keeps scores in a
real ScoreCache. The public behaviour the frameworks' own DashScopeRerank tests check
(it is the framework's base class, a missing key is a ValueError, the default top_n is 3
and the best document comes first) is covered for our classes, plus the cache.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.load import dumpd, dumps
from langchain_core.retrievers import BaseRetriever
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import Field, SecretStr

from rerank_cache import AuthenticationError, ScoreCache, close_async_sessions
from rerank_cache.integrations import langchain as lc
from rerank_cache.integrations import llama_index as li
from rerank_cache.testing import DashScopeServer, score

from .conftest import API_KEY

T = TypeVar("T")

QUERY = "how to cache rerank scores"
TEXTS = [
    "Bread rises when yeast ferments the dough.",
    "Cache rerank scores by query and document hash.",
    "A score cache saves repeated rerank calls.",
    "Rivers carry sediment to the sea.",
    "How to tune a piano by ear.",
]


def run_async(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` in a fresh event loop, closing the SDK's session of that loop."""

    async def main() -> T:
        try:
            return await awaitable
        finally:
            await close_async_sessions()

    return asyncio.run(main())


def expected(texts: list[str], query: str = QUERY, model: str = "gte-rerank-v2") -> list[float]:
    """The local server's scores for ``texts``, best first."""
    return sorted((score(query, t, model=model) for t in texts), reverse=True)


# -- one interface over both adapters, for the behaviour they share ----------------------------


def run_langchain(reranker: Any, texts: list[str], query: str) -> list[tuple[str, float]]:
    out = reranker.compress_documents([Document(page_content=t) for t in texts], query)
    return [(d.page_content, d.metadata["relevance_score"]) for d in out]


def run_llama(reranker: Any, texts: list[str], query: str) -> list[tuple[str, float]]:
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in texts]
    out = reranker.postprocess_nodes(nodes, query_str=query)
    return [(n.node.get_content(), n.score) for n in out]


async def arun_langchain(reranker: Any, texts: list[str], query: str) -> list[tuple[str, float]]:
    out = await reranker.acompress_documents([Document(page_content=t) for t in texts], query)
    return [(d.page_content, d.metadata["relevance_score"]) for d in out]


async def arun_llama(reranker: Any, texts: list[str], query: str) -> list[tuple[str, float]]:
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in texts]
    out = await reranker.apostprocess_nodes(nodes, query_str=query)
    return [(n.node.get_content(), n.score) for n in out]


ADAPTERS = {
    "langchain": (lc.CachedDashScopeRerank, run_langchain, arun_langchain),
    "llama_index": (li.CachedDashScopeRerank, run_llama, arun_llama),
}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> tuple[Any, Any, Any]:
    """(class, sync runner, async runner) of one adapter."""
    return ADAPTERS[request.param]


@pytest.fixture
def make(
    server: DashScopeServer, cache: ScoreCache, adapter: tuple[Any, Any, Any]
) -> Iterator[Callable[..., Any]]:
    """Build the adapter against the local server and the tmp cache."""
    made: list[Any] = []

    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", server.base_url)
        kwargs.setdefault("cache", cache)
        made.append(adapter[0](**kwargs))
        return made[-1]

    yield build
    for reranker in made:
        reranker.close()


def test_is_the_frameworks_base_class() -> None:
    """Each adapter is the framework's own base type, as the frameworks' tests check."""
    assert issubclass(lc.CachedDashScopeRerank, BaseDocumentCompressor)
    assert issubclass(li.CachedDashScopeRerank, BaseNodePostprocessor)
    assert li.CachedDashScopeRerank.class_name() == "CachedDashScopeRerank"


def test_default_top_n_is_three_best_first(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any]
) -> None:
    """Three results by default, best first, each scored by DashScope."""
    got = adapter[1](make(), TEXTS, QUERY)
    assert [s for _, s in got] == expected(TEXTS)[:3]
    assert got[0][0] == "Cache rerank scores by query and document hash."
    assert {t for t, _ in got} <= set(TEXTS)


def test_top_n(make: Callable[..., Any], adapter: tuple[Any, Any, Any]) -> None:
    """top_n limits the results; more than there are gives them all."""
    assert len(adapter[1](make(top_n=1), TEXTS, QUERY)) == 1
    assert [s for _, s in adapter[1](make(top_n=50), TEXTS, QUERY)] == expected(TEXTS)


def test_second_call_sends_nothing(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """The same query and documents again are answered from the cache: no request."""
    reranker = make()
    first = adapter[1](reranker, TEXTS, QUERY)
    assert len(server.requests_log) == 1
    assert adapter[1](reranker, TEXTS, QUERY) == first
    assert len(server.requests_log) == 1
    assert reranker.store.stats().hits == len(TEXTS)
    assert reranker.usage.requests == 1


def test_only_new_documents_are_sent(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """A second candidate list that overlaps the first sends only the new documents."""
    reranker = make(top_n=None) if adapter[0] is lc.CachedDashScopeRerank else make(top_n=10)
    adapter[1](reranker, TEXTS[:3], QUERY)
    got = adapter[1](reranker, TEXTS, QUERY)
    assert [s for _, s in got] == expected(TEXTS)
    assert server.requests_log[-1].documents == tuple(TEXTS[3:])


def test_scores_are_shared_with_the_plain_reranker(
    make: Callable[..., Any],
    adapter: tuple[Any, Any, Any],
    make_reranker: Callable[..., Any],
    cache: ScoreCache,
    server: DashScopeServer,
) -> None:
    """Same model, query and text: the adapter reuses what QwenReRanker.cached() stored."""
    from rerank_cache import Doc

    plain = make_reranker(QUERY).cached(cache)
    plain.rerank([[Doc(str(i), fields={"content": t}) for i, t in enumerate(TEXTS)]])
    sent = len(server.requests_log)
    assert [s for _, s in adapter[1](make(), TEXTS, QUERY)] == expected(TEXTS)[:3]
    assert len(server.requests_log) == sent


def test_async_matches_sync_and_shares_the_cache(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """The async form gives the same results; after it, the sync form sends nothing."""
    reranker = make()
    got = run_async(adapter[2](reranker, TEXTS, QUERY))
    assert [s for _, s in got] == expected(TEXTS)[:3]
    assert len(server.requests_log) == 1
    assert adapter[1](reranker, TEXTS, QUERY) == got
    assert run_async(adapter[2](reranker, TEXTS, QUERY)) == got
    assert len(server.requests_log) == 1


def test_empty_input_sends_nothing(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """No documents: [] without a request, sync and async."""
    reranker = make()
    assert adapter[1](reranker, [], QUERY) == []
    assert run_async(adapter[2](reranker, [], QUERY)) == []
    assert server.requests_log == []


def test_blank_texts_are_never_sent(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """Blank documents are not sent or returned; only blank ones give []."""
    reranker = make()
    got = adapter[1](reranker, ["   ", TEXTS[1], ""], QUERY)
    assert [t for t, _ in got] == [TEXTS[1]]
    assert server.requests_log[-1].documents == (TEXTS[1],)
    assert adapter[1](reranker, [" ", "\n"], QUERY) == []
    assert len(server.requests_log) == 1


def test_model_and_instruct_reach_dashscope(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """model and instruct are sent, and are part of the cache key."""
    instruct = "Given a question, find passages that answer it."
    got = adapter[1](make(model="qwen3-rerank", instruct=instruct), TEXTS, QUERY)
    sent = server.requests_log[-1]
    assert (sent.model, sent.instruct) == ("qwen3-rerank", instruct)
    assert [s for _, s in got] == sorted(
        (score(QUERY, t, model="qwen3-rerank", instruct=instruct) for t in TEXTS), reverse=True
    )[:3]
    adapter[1](make(model="qwen3-rerank"), TEXTS, QUERY)  # another instruct: another key
    assert len(server.requests_log) == 2


def test_key_never_shown(make: Callable[..., Any], tmp_path: Path) -> None:
    """Neither repr, str nor a dump shows the key or a password in the cache URL."""
    reranker = make(api_key="sk-very-secret-key", cache=str(tmp_path / "c"))
    for text in (repr(reranker), str(reranker), str(reranker.model_dump())):
        assert "sk-very-secret-key" not in text
    assert isinstance(reranker.api_key, SecretStr)
    assert reranker.api_key.get_secret_value() == "sk-very-secret-key"


def test_cache_setting_never_shown(make: Callable[..., Any], tmp_path: Path) -> None:
    """The cache setting is left out of repr and dumps (a Redis URL may carry a password)."""
    reranker = make(cache=(tmp_path / "hunter2-dir").as_uri())
    for text in (repr(reranker), str(reranker.model_dump())):
        assert "hunter2" not in text


#: A base_url with a password and a token; serialized forms must show neither, nor the key.
SECRET_URL_PATH = "/api/v1"
SECRETS = ("s3cret", "sk-very-secret-key")


def secret_url(server: DashScopeServer) -> str:
    """The local server's address with a password in it (a query string is refused)."""
    host = server.base_url.removeprefix("http://").removesuffix("/api/v1")
    return f"http://user:s3cret@{host}{SECRET_URL_PATH}"


def assert_no_secret(forms: dict[str, object]) -> None:
    """None of ``forms`` (name: serialized form) shows a password, token or the key."""
    for name, form in forms.items():
        text = form if isinstance(form, str) else repr(form)
        leaked = [secret for secret in SECRETS if secret in text]
        assert not leaked, f"{name} shows {leaked}: {text}"


def test_base_url_credentials_never_shown(
    make: Callable[..., Any], server: DashScopeServer
) -> None:
    """repr, str and every pydantic dump redact base_url and leave the key out."""
    url = secret_url(server)
    reranker = make(api_key="sk-very-secret-key", base_url=url)
    dumped = reranker.model_dump()
    assert dumped["base_url"] == "http://user:***@" + url.split("@")[1]
    assert "api_key" not in dumped
    assert "cache" not in dumped
    assert "user:***@" in repr(reranker)
    assert_no_secret(
        {
            "repr": repr(reranker),
            "str": str(reranker),
            "model_dump": dumped,
            "model_dump(json)": reranker.model_dump(mode="json"),
            "model_dump(round_trip)": reranker.model_dump(round_trip=True),
            "model_dump_json": reranker.model_dump_json(),
            # What LangSmith's tracing calls for a pydantic model, bypassing model_dump.
            "core serializer": type(reranker).__pydantic_serializer__.to_python(
                reranker, mode="json"
            ),
        }
    )
    assert reranker.base_url == url


def test_reranks_through_a_base_url_with_credentials(
    make: Callable[..., Any], adapter: tuple[Any, Any, Any], server: DashScopeServer
) -> None:
    """Requests go to the real base_url, password included, whatever dumps show."""
    url = server.base_url.replace("http://", "http://user:s3cret@")
    reranker = make(base_url=url)
    reranker.model_dump_json()
    got = adapter[1](reranker, TEXTS, QUERY)
    assert [relevance for _, relevance in got] == expected(TEXTS)[:3]
    assert server.requests_log[-1].path.endswith("/text-rerank/text-rerank")
    assert reranker.base_url == url


def test_key_alias_and_environment(
    adapter: tuple[Any, Any, Any],
    server: DashScopeServer,
    cache: ScoreCache,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """api_key, dashscope_api_key and DASHSCOPE_API_KEY all provide the key."""
    cls, run, _ = adapter
    settings = {"base_url": server.base_url, "cache": cache}
    with DashScopeServer(api_keys=["sk-right"]) as strict:
        settings["base_url"] = strict.base_url
        for reranker in (
            cls(api_key="sk-right", **settings),
            cls(dashscope_api_key="sk-right", **settings),
        ):
            assert run(reranker, TEXTS[:2], QUERY)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-right")
        assert run(cls(**settings), TEXTS[2:], QUERY)
        assert strict.stats.ok_requests == 2


def test_missing_key_is_a_value_error(adapter: tuple[Any, Any, Any], cache: ScoreCache) -> None:
    """No key at all raises ValueError when the object is built, as the frameworks do."""
    with pytest.raises(ValueError, match="DASHSCOPE_API_KEY"):
        adapter[0](cache=cache)


def test_refused_key_raises_without_the_key(
    adapter: tuple[Any, Any, Any], cache: ScoreCache
) -> None:
    """A refused key raises AuthenticationError, and nothing is cached."""
    cls, run, _ = adapter
    with DashScopeServer(api_keys=["sk-right"]) as strict:
        reranker = cls(api_key="sk-wrong-key", base_url=strict.base_url, cache=cache)
        with pytest.raises(AuthenticationError) as info:
            run(reranker, TEXTS, QUERY)
    assert "sk-wrong-key" not in str(info.value)
    assert cache.count() == 0


def test_empty_query_and_bad_top_n(make: Callable[..., Any], adapter: tuple[Any, Any, Any]) -> None:
    """An empty query or a top_n below 1 is a ValueError, before any request."""
    with pytest.raises(ValueError, match=r"[Qq]uery"):
        adapter[1](make(), TEXTS, "  ")
    with pytest.raises(ValueError, match="topn"):
        adapter[1](make(top_n=0), TEXTS, QUERY)


def test_settings_that_shape_the_key_are_frozen(make: Callable[..., Any]) -> None:
    """model cannot change after building (the client is built); top_n can."""
    reranker = make()
    with pytest.raises(ValueError, match="frozen"):
        reranker.model = "gte-rerank"
    reranker.top_n = 1
    assert reranker.top_n == 1


@pytest.mark.parametrize("form", ["dir", "path", "file-url"])
def test_cache_as_directory_or_url(
    adapter: tuple[Any, Any, Any], server: DashScopeServer, tmp_path: Path, form: str
) -> None:
    """A directory, a Path or a file:// URL opens a ScoreCache there; close() closes it."""
    cls, run, _ = adapter
    where = tmp_path / "scores"
    setting = {"dir": str(where), "path": where, "file-url": where.as_uri()}[form]
    reranker = cls(api_key=API_KEY, base_url=server.base_url, cache=setting)
    run(reranker, TEXTS, QUERY)
    reranker.close()
    with ScoreCache(where) as reopened:
        assert reopened.count() == len(TEXTS)


def test_default_store_is_the_one_cached_uses(
    adapter: tuple[Any, Any, Any], server: DashScopeServer, tmp_path: Path
) -> None:
    """cache=None uses the store QwenReRanker.cached() would: here RERANK_CACHE_DIR."""
    cls, run, _ = adapter
    reranker = cls(api_key=API_KEY, base_url=server.base_url)
    run(reranker, TEXTS, QUERY)
    reranker.close()
    with ScoreCache(tmp_path / "default-cache") as default:
        assert default.count() == len(TEXTS)


def test_a_store_passed_in_stays_open(make: Callable[..., Any], cache: ScoreCache) -> None:
    """close() leaves a store the caller passed in open; a bad cache value is refused."""
    make().close()
    assert cache.count() == 0  # still usable
    with pytest.raises(ValueError, match="cache"):
        make(cache=42)


def test_import_rerank_cache_imports_no_framework() -> None:
    """`import rerank_cache` (and the integrations package) imports neither framework."""
    code = (
        "import sys, rerank_cache, rerank_cache.integrations\n"
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'llama_index'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- LangChain ---------------------------------------------------------------------------------


@pytest.fixture
def compressor(server: DashScopeServer, cache: ScoreCache) -> lc.CachedDashScopeRerank:
    """The LangChain adapter against the local server."""
    return lc.CachedDashScopeRerank(api_key=API_KEY, base_url=server.base_url, cache=cache)


def test_langchain_keeps_metadata_and_id_on_copies(
    compressor: lc.CachedDashScopeRerank,
) -> None:
    """Results are copies carrying the original metadata, id and relevance_score."""
    docs = [
        Document(page_content=t, metadata={"source": f"s{i}", "tags": ["x"]}, id=f"d{i}")
        for i, t in enumerate(TEXTS)
    ]
    out = compressor.compress_documents(documents=docs, query=QUERY)
    for doc in out:
        original = docs[int(doc.id[1:])]
        assert doc is not original
        assert doc.page_content == original.page_content
        assert doc.metadata == {
            **original.metadata,
            "relevance_score": score(QUERY, doc.page_content),
        }
    out[0].metadata["tags"].append("changed")
    assert all("relevance_score" not in d.metadata and d.metadata["tags"] == ["x"] for d in docs)


def test_langchain_top_n_none_and_score_threshold(compressor: lc.CachedDashScopeRerank) -> None:
    """top_n=None returns every document; score_threshold drops the weaker ones."""
    docs = [Document(page_content=t) for t in TEXTS]
    compressor.top_n = None
    scores = [d.metadata["relevance_score"] for d in compressor.compress_documents(docs, QUERY)]
    assert scores == expected(TEXTS)
    compressor.score_threshold = scores[1]
    kept = compressor.compress_documents(docs, QUERY)
    assert [d.metadata["relevance_score"] for d in kept] == scores[:2]


def test_langchain_one_line_swap(server: DashScopeServer, cache: ScoreCache) -> None:
    """The community class's keywords work unchanged; only the class name differs."""
    reranker = lc.CachedDashScopeRerank(
        model="gte-rerank",
        top_n=2,
        score_threshold=0.0,
        dashscope_api_key=API_KEY,
        base_url=server.base_url,
        cache=cache,
    )
    out = reranker.compress_documents(
        query=QUERY, documents=[Document(page_content=t) for t in TEXTS]
    )
    assert [d.metadata["relevance_score"] for d in out] == expected(TEXTS, model="gte-rerank")[:2]
    assert server.requests_log[-1].model == "gte-rerank"


class ListRetriever(BaseRetriever):
    """A tiny in-memory retriever: every query gets the same documents."""

    docs: list[Document]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return list(self.docs)


def test_langchain_inside_contextual_compression_retriever(
    compressor: lc.CachedDashScopeRerank, server: DashScopeServer
) -> None:
    """ContextualCompressionRetriever reranks through it, sync and async, cached."""
    docs = [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(TEXTS)]
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=ListRetriever(docs=docs)
    )
    got = retriever.invoke(QUERY)
    assert [d.metadata["relevance_score"] for d in got] == expected(TEXTS)[:3]
    assert all(d.metadata["n"] == TEXTS.index(d.page_content) for d in got)
    again = run_async(retriever.ainvoke(QUERY))
    assert again == got
    assert len(server.requests_log) == 1


class RunCollector(BaseTracer):
    """A LangChain tracer that keeps every finished run, as LangSmith's tracer receives it."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.runs.append(run)


def test_langchain_serialization_hides_url_credentials_and_key(
    server: DashScopeServer, cache: ScoreCache
) -> None:
    """dumpd, dumps, a retriever's dumps and a traced run show no password, token or key."""
    password_url = server.base_url.replace("http://", "http://user:s3cret@")
    compressor = lc.CachedDashScopeRerank(
        api_key="sk-very-secret-key", base_url=password_url, cache=cache
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor,
        base_retriever=ListRetriever(docs=[Document(page_content=t) for t in TEXTS]),
    )
    tracer = RunCollector()
    assert retriever.invoke(QUERY, config={"callbacks": [tracer]})
    (run,) = tracer.runs
    shown = lc.CachedDashScopeRerank(
        api_key="sk-very-secret-key", base_url=secret_url(server), cache=cache
    )
    assert_no_secret(
        {
            "dumpd": dumpd(shown),
            "dumps": dumps(shown, pretty=True),
            "retriever dumpd": dumpd(retriever),
            "retriever dumps": dumps(retriever),
            "retriever model_dump_json": retriever.model_dump_json(),
            "traced run": run.model_dump_json(),
        }
    )
    # Not lc-serializable: both dumps carry the repr, which shows the URL redacted.
    assert "user:***@" in dumps(shown)
    assert "user:***@" in dumps(retriever)


# -- LlamaIndex --------------------------------------------------------------------------------


@pytest.fixture
def postprocessor(server: DashScopeServer, cache: ScoreCache) -> li.CachedDashScopeRerank:
    """The LlamaIndex adapter against the local server."""
    return li.CachedDashScopeRerank(api_key=API_KEY, base_url=server.base_url, cache=cache)


def test_llama_index_sends_the_embed_text(
    postprocessor: li.CachedDashScopeRerank, server: DashScopeServer
) -> None:
    """Nodes are scored on get_content(metadata_mode=EMBED), as LlamaIndex's reranker does."""
    nodes = [
        NodeWithScore(
            node=TextNode(
                text=t,
                id_=f"n{i}",
                metadata={"title": "notes", "path": f"/private/{i}.md"},
                excluded_embed_metadata_keys=["path"],
            ),
            score=0.5,
        )
        for i, t in enumerate(TEXTS)
    ]
    out = postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    sent = server.requests_log[-1].documents
    assert sent == tuple(n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes)
    assert all("title: notes" in text and "/private/" not in text for text in sent)
    assert [n.score for n in out] == expected(list(sent))[:3]
    by_id = {n.node.node_id: n.node for n in nodes}
    assert all(n.node is by_id[n.node.node_id] for n in out)


def test_llama_index_query_str_and_bundle_agree(
    postprocessor: li.CachedDashScopeRerank, server: DashScopeServer
) -> None:
    """query_str= and query_bundle= give the same nodes; the second call is cached."""
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    by_str = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    by_bundle = postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert [(n.node.node_id, n.score) for n in by_str] == [
        (n.node.node_id, n.score) for n in by_bundle
    ]
    assert len(server.requests_log) == 1


def test_llama_index_needs_a_query(
    postprocessor: li.CachedDashScopeRerank, server: DashScopeServer
) -> None:
    """No query raises ValueError (also for no nodes, and async), as LlamaIndex's does."""
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    for given in (nodes, []):
        with pytest.raises(ValueError, match="Missing query bundle"):
            postprocessor.postprocess_nodes(given)
        with pytest.raises(ValueError, match="Missing query bundle"):
            run_async(postprocessor.apostprocess_nodes(given))
    assert server.requests_log == []


def test_llama_index_one_line_swap(server: DashScopeServer, cache: ScoreCache) -> None:
    """The LlamaIndex class's keywords work unchanged (return_documents is ignored, as there)."""
    reranker = li.CachedDashScopeRerank(
        top_n=2,
        model="gte-rerank",
        return_documents=True,
        api_key=API_KEY,
        base_url=server.base_url,
        cache=cache,
    )
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.score for n in out] == expected(TEXTS, model="gte-rerank")[:2]
    assert server.requests_log[-1].model == "gte-rerank"


def test_llama_index_reports_a_reranking_event(server: DashScopeServer, cache: ScoreCache) -> None:
    """Callback handlers see one RERANKING event with the returned nodes."""
    debug = LlamaDebugHandler()
    reranker = li.CachedDashScopeRerank(
        api_key=API_KEY,
        base_url=server.base_url,
        cache=cache,
        callback_manager=CallbackManager([debug]),
    )
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    (_start, end), *rest = debug.get_event_pairs(CBEventType.RERANKING)
    assert rest == []
    assert end.payload is not None
    assert [n.score for n in end.payload["nodes"]] == [n.score for n in out]


class EventDumps(BaseEventHandler):
    """A LlamaIndex instrumentation handler that serializes every event it sees."""

    dumps: list[str] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        """The handler's name."""
        return "EventDumps"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Keep the event's JSON form, as an exporting handler would."""
        self.dumps.append(event.model_dump_json())


def test_llama_index_serialization_hides_url_credentials_and_key(
    server: DashScopeServer, cache: ScoreCache
) -> None:
    """to_dict, to_json, dict, json, callback payloads and events show no secret."""
    debug = LlamaDebugHandler()
    reranker = li.CachedDashScopeRerank(
        api_key="sk-very-secret-key",
        base_url=server.base_url.replace("http://", "http://user:s3cret@"),
        cache=cache,
        callback_manager=CallbackManager([debug]),
    )
    events = EventDumps()
    root = get_dispatcher()
    root.add_event_handler(events)
    try:
        reranker.postprocess_nodes(
            [NodeWithScore(node=TextNode(text=t)) for t in TEXTS], query_str=QUERY
        )
    finally:
        root.event_handlers.remove(events)
    assert len(events.dumps) >= 2  # ReRankStartEvent and ReRankEndEvent at least
    shown = li.CachedDashScopeRerank(
        api_key="sk-very-secret-key", base_url=secret_url(server), cache=cache
    )
    assert_no_secret(
        {
            "to_dict": shown.to_dict(),
            "to_json": shown.to_json(),
            "dict": shown.dict(),
            "json": shown.json(),
            "callback payloads": [pair.payload for pair in debug.get_events()],
            "events": events.dumps,
            "reranking adapter to_json": reranker.to_json(),
        }
    )
    assert shown.to_dict()["class_name"] == "CachedDashScopeRerank"
    assert "user:***@" in shown.to_json()


USER_CODE = """
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rerank_cache import ScoreCache
from rerank_cache.integrations.langchain import CachedDashScopeRerank as LangChainRerank
from rerank_cache.integrations.llama_index import CachedDashScopeRerank as LlamaRerank

compressor = LangChainRerank(model="gte-rerank", top_n=2, api_key="sk-...", cache="scores")
docs = compressor.compress_documents([Document(page_content="a")], "q")
postprocessor = LlamaRerank(top_n=2, api_key="sk-...", cache=ScoreCache("scores"))
nodes: list[NodeWithScore] = postprocessor.postprocess_nodes(
    [NodeWithScore(node=TextNode(text="a"))], query_bundle=QueryBundle("q")
)
"""


def test_user_code_type_checks(tmp_path: Path) -> None:
    """Calls as the frameworks' own classes are made (api_key as str) pass mypy --strict."""
    user = tmp_path / "user.py"
    user.write_text(USER_CODE, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--strict", str(user)],
        cwd=root,
        env={**os.environ, "MYPYPATH": str(root / "src")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
