"""What both framework adapters share: their settings, opening the store, ranking texts.

The adapters hand plain texts to a :class:`CachedReRanker` through its public ``rerank`` /
``arerank`` (as :class:`rerank_cache.Doc` objects), so results, cache keys and errors are
exactly those of ``QwenReRanker(...).cached()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_serializer,
    field_validator,
)

from ..base import DEFAULT_MODEL
from ..cached import CachedReRanker
from ..client.results import UsageTotals
from ..doc import Doc
from ..errors import NoDocumentsError
from ..reranker import QwenReRanker
from ..stores.disk import ScoreCache
from ..stores.protocols import ScoreStore
from ..urls import redact_url

__all__ = ["CacheSetting", "CachedSettings", "Ranked", "Ranker", "open_ranker"]

#: What an adapter's ``cache`` setting accepts: a store, a directory or cache URL, or None
#: for the default store (``RERANK_CACHE_URL``, else ``RERANK_CACHE_DIR`` or the user cache).
CacheSetting = ScoreStore | str | os.PathLike[str] | None

#: (position in the caller's list, relevance score), best first.
Ranked = list[tuple[int, float]]

_FIELD = "text"
# QwenReRanker is bound to one query; the adapters get theirs per call, so this instance is
# only ever copied with with_query() (sharing client, limits and usage) and never scores.
_UNBOUND_QUERY = "(bound per call by with_query)"


@dataclass(frozen=True)
class Ranker:
    """A cached reranker for texts whose query arrives with each call.

    Attributes:
        base: the DashScope reranker (its client is shared by every call).
        reranker: ``base`` behind the cache; every call copies it with ``with_query``.
        owns_store: True when the store was opened here (so :meth:`close` closes it).
    """

    base: QwenReRanker
    reranker: CachedReRanker
    owns_store: bool

    @property
    def store(self) -> ScoreStore:
        """The score store."""
        return self.reranker.cache

    @property
    def usage(self) -> UsageTotals:
        """DashScope usage of every call so far (cache hits cost nothing)."""
        return self.base.usage

    def rank(self, query: str, texts: Sequence[str], top_n: int | None) -> Ranked:
        """Score ``texts`` against ``query``; return the best ``top_n`` (None: all).

        Texts that are empty or blank are never sent and never returned.
        """
        if not texts:
            return []
        scorer = self.reranker.with_query(query)
        try:
            best = scorer.rerank(_docs(texts), topn=_limit(top_n, texts))
        except NoDocumentsError:
            return []
        return _positions(best)

    async def arank(self, query: str, texts: Sequence[str], top_n: int | None) -> Ranked:
        """The asyncio twin of :meth:`rank`, through ``arerank``."""
        if not texts:
            return []
        scorer = self.reranker.with_query(query)
        try:
            best = await scorer.arerank(_docs(texts), topn=_limit(top_n, texts))
        except NoDocumentsError:
            return []
        return _positions(best)

    def close(self) -> None:
        """Close the store if it was opened here; a store passed in is the caller's."""
        if self.owns_store:
            self.reranker.cache.close()


def open_ranker(
    *,
    model: str,
    api_key: str | None,
    instruct: str | None,
    base_url: str | None,
    cache: CacheSetting,
) -> Ranker:
    """Build the reranker an adapter uses; the key and the store are checked now.

    Raises:
        ConfigurationError: (a ``ValueError``) no API key, an empty model, or a cache URL
            of an unknown scheme.
    """
    base = QwenReRanker(
        _UNBOUND_QUERY,
        rerank_field=_FIELD,
        model=model,
        api_key=api_key,
        instruct=instruct,
        base_url=base_url,
    )
    if cache is None:  # the default store, chosen exactly as .cached() chooses it
        return Ranker(base, base.cached(), owns_store=True)
    if isinstance(cache, (str, os.PathLike)):
        return Ranker(base, base.cached(ScoreCache.from_url(cache)), owns_store=True)
    return Ranker(base, base.cached(cache), owns_store=False)


def _limit(top_n: int | None, texts: Sequence[str]) -> int:
    return len(texts) if top_n is None else top_n


def _docs(texts: Sequence[str]) -> list[list[Doc]]:
    return [[Doc(str(position), fields={_FIELD: text}) for position, text in enumerate(texts)]]


def _positions(best: list[Any]) -> Ranked:
    return [(int(doc.id), float(doc.score)) for doc in best]


class CachedSettings(BaseModel):
    """The settings both adapters share, and the reranker built from them.

    Mixed in before the framework's base class, so the adapters are pydantic models of the
    framework's own kind. The settings that shape requests and cache keys are frozen: the
    reranker is built from them once, when the object is.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)  # ScoreStore is a Protocol

    model: str = Field(default=DEFAULT_MODEL, frozen=True, description="DashScope rerank model.")
    # str too, so that `api_key="sk-..."` type-checks for callers; always a SecretStr once
    # validated (see _secret), so the key never shows in repr.
    api_key: SecretStr | str | None = Field(
        default=None,
        validation_alias=AliasChoices("api_key", "dashscope_api_key"),
        frozen=True,
        exclude=True,
        description="DashScope API key (default: DASHSCOPE_API_KEY).",
    )
    instruct: str | None = Field(default=None, frozen=True, description="Task instruction.")
    # A base_url may carry credentials: repr (__repr_args__) and every dump (_shown_url)
    # show it redacted, while requests use the real one.
    base_url: str | None = Field(
        default=None, frozen=True, repr=False, description="API base address."
    )
    # Hidden from repr and dumps: a Redis URL may carry a password.
    cache: CacheSetting = Field(
        default=None,
        frozen=True,
        repr=False,
        exclude=True,
        description="Score store, directory or cache URL; None for the default store.",
    )

    _ranker: Ranker = PrivateAttr()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields repr and str show, with ``base_url`` redacted."""
        yield from super().__repr_args__()
        if self.base_url is not None:
            yield "base_url", redact_url(self.base_url)

    @field_serializer("base_url")
    def _shown_url(self, value: str | None) -> str | None:
        # In pydantic's core serializer, so model_dump(_json), LlamaIndex's to_dict/to_json
        # and LangSmith's tracing (which calls that serializer directly) all redact it.
        return None if value is None else redact_url(value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: object) -> object:
        return SecretStr(value) if isinstance(value, str) else value

    def model_post_init(self, context: object, /) -> None:
        """Build the reranker and open the store (checks the key now)."""
        key = self.api_key
        self._ranker = open_ranker(
            model=self.model,
            api_key=key.get_secret_value() if isinstance(key, SecretStr) else key,
            instruct=self.instruct,
            base_url=self.base_url,
            cache=self.cache,
        )

    @property
    def store(self) -> ScoreStore:
        """The score store (``.store.stats()`` shows hits, misses and what was saved)."""
        return self._ranker.store

    @property
    def usage(self) -> UsageTotals:
        """DashScope requests, documents and tokens paid for so far (hits cost nothing)."""
        return self._ranker.usage

    def close(self) -> None:
        """Close the store if this object opened it (a store passed in stays open)."""
        self._ranker.close()
