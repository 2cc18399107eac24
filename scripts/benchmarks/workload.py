"""A synthetic corpus with a retrieval stand-in, and a seeded workload of overlapping queries.

Shared by the rows that need documents or traffic; everything is seeded, so the counts are
the same from run to run.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import (
    FIELD,
    load_corpus,
)
from rerank_cache import Doc

_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class Corpus:
    """Documents of 300-500 characters in topics, with a word-overlap retriever per route.

    The retriever stands in for vector search: route ``content`` ranks documents by how
    many query words their text contains, route ``title`` by how many their title contains,
    ties broken by a fixed per-document order. It is deterministic and fast, and, like real
    retrieval, gives related queries overlapping candidate lists.
    """

    ids: list[str]
    titles: list[str]
    texts: list[str]
    topic_words: list[list[str]]
    index: dict[str, dict[str, list[int]]]
    noise: list[float]

    def docs(self, indexes: Sequence[int]) -> list[Doc]:
        """rerank_cache.Doc objects for these documents."""
        return [
            Doc(self.ids[i], fields={FIELD: self.texts[i], "title": self.titles[i]})
            for i in indexes
        ]

    def distinct(self) -> list[int]:
        """One index per distinct text (mirrored pages share a text; the last one is kept)."""
        return list({t: i for i, t in enumerate(self.texts)}.values())

    def retrieve(self, query: str, route: str, k: int) -> list[int]:
        """The top ``k`` document indexes for ``query`` on ``route``."""
        counts: dict[int, int] = {}
        for word in {w.lower() for w in _WORD.findall(query)}:
            for i in self.index[route].get(word, ()):
                counts[i] = counts.get(i, 0) + 1
        ranked = sorted(counts, key=lambda i: (-counts[i], self.noise[i]))
        return ranked[:k]


def make_corpus(n: int, seed: int) -> Corpus:
    """Build ``n`` synthetic documents from the packaged corpus's vocabulary (seeded)."""
    rng = random.Random(seed)
    vocabulary = sorted(
        {
            w.lower()
            for d in load_corpus()
            for w in _WORD.findall(d["content"] + " " + d["title"])
            if len(w) > 3
        }
    )
    n_topics = max(12, n // 60)
    topic_words = [rng.sample(vocabulary, 40) for _ in range(n_topics)]
    ids, titles, texts = [], [], []
    for i in range(n):
        topic = rng.randrange(n_topics)
        words = topic_words[topic]
        if i > 10 and rng.random() < 0.02:
            # A mirrored page: the same text under another id (zvec dedups by id only).
            source = rng.randrange(i)
            titles.append(titles[source])
            texts.append(texts[source])
        else:
            titles.append(" ".join(w.capitalize() for w in rng.sample(words, rng.randint(3, 6))))
            target = rng.randint(300, 500)
            sentences: list[str] = []
            length = 0
            while length < target:
                sentence = [
                    rng.choice(words) if rng.random() < 0.6 else rng.choice(vocabulary)
                    for _ in range(rng.randint(6, 14))
                ]
                text = " ".join(sentence).capitalize() + rng.choice((".", ".", ".", ",", ";"))
                sentences.append(text)
                length += len(text) + 1
            body = " ".join(sentences)[: target - 1]
            body = body[: body.rfind(" ")].rstrip(",;.") + "."
            texts.append(body)
        ids.append(f"doc-{i:06d}")
    index: dict[str, dict[str, list[int]]] = {"content": {}, "title": {}}
    for i in range(n):
        for route, text in (("content", texts[i]), ("title", titles[i])):
            for word in {w.lower() for w in _WORD.findall(text)}:
                index[route].setdefault(word, []).append(i)
    noise = [rng.random() for _ in range(n)]
    return Corpus(ids, titles, texts, topic_words, index, noise)


# -- a seeded workload of overlapping queries ---------------------------------------------

_TEMPLATES = (
    "{a} {b} {c}",
    "how does {a} affect {b} {c}",
    "what is {a} {b} in {c}",
    "why {a} {b} {c} {d}",
    "{a} {b} for {c} {d}",
    "best {a} {b} {c}",
)


@dataclass(frozen=True)
class Request:
    """One rerank: a query and its candidate lists, one per vector route."""

    kind: str
    query: str
    routes: tuple[tuple[int, ...], ...]


def make_workload(corpus: Corpus, n_queries: int, seed: int) -> list[Request]:
    """Traffic shaped like real search: repeats, drift, reformulations, pages, routes.

    * ``new``: a new information need; 40 candidates from each of the two routes.
    * ``repeat``: the very same request again (popular queries repeat).
    * ``drift``: the same query after the index changed a little: per route one candidate
      dropped, one new one inserted, two neighbours swapped.
    * ``reformulation``: the user rephrases (new query text, mostly the same candidates).
    * ``page``: the next page: the same query with a pool twice (three times) as wide.
    * ``route``: the same query over one route only (a filter or a title search).
    """
    rng = random.Random(seed)
    per_route = 40
    needs: list[dict[str, Any]] = []  # words, query text, page
    history: list[Request] = []

    def query_for(words: list[str]) -> str:
        template = rng.choice(_TEMPLATES)
        a, b, c, d = (words + words)[:4]
        return template.format(a=a, b=b, c=c, d=d)

    def fetch(query: str, page: int, routes: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(corpus.retrieve(query, r, per_route * page)) for r in routes)

    def new_need() -> Request:
        topic = rng.randrange(len(corpus.topic_words))
        words = rng.sample(corpus.topic_words[topic], 4)
        need = {"words": words, "query": query_for(words), "page": 1}
        needs.append(need)
        return Request("new", need["query"], fetch(need["query"], 1, ("content", "title")))

    while len(history) < n_queries:
        r = rng.random()
        if not needs or r < 0.30:
            request = new_need()
        elif r < 0.50:
            # Popular queries repeat most: half the repeats come from the first 20 needs.
            head = [h for h in history[:60] if h.kind == "new"][:20]
            request = rng.choice(head if head and rng.random() < 0.5 else history)
            request = Request("repeat", request.query, request.routes)
        elif r < 0.62:
            base = rng.choice(history)
            routes = []
            for route in base.routes:
                items = list(route)
                if len(items) > 3:
                    gone = rng.randrange(len(items))
                    del items[gone]
                    present = set(items)
                    newcomer = rng.randrange(len(corpus.ids))
                    while newcomer in present:
                        newcomer = rng.randrange(len(corpus.ids))
                    items.insert(rng.randrange(len(items) + 1), newcomer)
                    swap = rng.randrange(len(items) - 1)
                    items[swap], items[swap + 1] = items[swap + 1], items[swap]
                routes.append(tuple(items))
            request = Request("drift", base.query, tuple(routes))
        elif r < 0.77:
            need = rng.choice(needs)
            words = list(need["words"])
            rng.shuffle(words)
            if rng.random() < 0.5:
                words[-1] = rng.choice(corpus.topic_words[rng.randrange(len(corpus.topic_words))])
            query = query_for(words)
            if query == need["query"]:
                query += " explained"
            new = {"words": words, "query": query, "page": 1}
            needs.append(new)
            request = Request("reformulation", query, fetch(query, 1, ("content", "title")))
        elif r < 0.90:
            need = rng.choice(needs)
            need["page"] = min(need["page"] + 1, 3)
            query = need["query"]
            request = Request("page", query, fetch(query, need["page"], ("content", "title")))
        else:
            need = rng.choice(needs)
            request = Request(
                "route", need["query"], fetch(need["query"], need["page"], ("content",))
            )
        history.append(request)
    return history


def request_texts(corpus: Corpus, request: Request) -> list[str]:
    """The texts a rerank of ``request`` scores (first occurrence of each id, in order)."""
    seen: set[int] = set()
    texts: list[str] = []
    for route in request.routes:
        for i in route:
            if i not in seen:
                seen.add(i)
                texts.append(corpus.texts[i])
    return texts
