"""Sample data and a toy embedding for the demo, the docs and tests.

Nothing here needs a model download or network access:

- :func:`load_corpus` reads the ~240-document sample corpus shipped with the package
  (``rerank_cache/data/corpus.jsonl``: twelve topics, several overlapping documents each).
- :func:`embed` is a deterministic hashed bag-of-words embedding: texts that share words get
  similar vectors, which is all a retrieval demo or test needs from a first stage.
- :func:`build_collection` loads the corpus into a real zvec collection (zvec is the optional
  ``zvec`` extra, imported only here).

Example:
    .. code-block:: python

        from zvec import Query
        from rerank_cache.examples import build_collection, embed

        collection = build_collection("/tmp/demo/corpus")  # the path must not exist yet
        try:
            hits = collection.query(
                Query(field_name="content_vec", vector=embed("cache search results")), topk=30
            )
        finally:
            collection.close()  # before removing the directory
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import zvec

__all__ = [
    "CONTENT_VECTOR",
    "DEFAULT_DIM",
    "TITLE_VECTOR",
    "build_collection",
    "embed",
    "load_corpus",
]

#: Dimension of :func:`embed` vectors unless told otherwise.
DEFAULT_DIM: Final = 64
#: Name of the vector field holding ``embed(content)`` in :func:`build_collection`.
CONTENT_VECTOR: Final = "content_vec"
#: Name of the vector field holding ``embed(title)`` in :func:`build_collection`.
TITLE_VECTOR: Final = "title_vec"

_CORPUS_FILE: Final = "corpus.jsonl"
_FIELDS: Final = ("id", "title", "content")
_TOKEN: Final = re.compile(r"\w+")
# Function words carry no topic; with only a few dozen buckets they would otherwise dominate
# every vector and make unrelated texts look alike.
_STOP_WORDS_TEXT: Final = """
    a about after all also an and any are as at be because been before being but by can could
    did do does doing for from had has have how i if in into is it its just me more most my no
    not of on once only or other our out over own same should so some such than that the their
    them then there these they this those through to too under until up very was we were what
    when where which while who why will with would you your
"""
_STOP_WORDS: Final = frozenset(_STOP_WORDS_TEXT.split())
_INSERT_BATCH: Final = 500


def load_corpus() -> list[dict[str, str]]:
    """Return the sample corpus shipped with the package.

    Returns:
        One dict per document, in file order, each with exactly the string keys ``id``
        (``"doc-001"`` ...), ``title`` and ``content``.

    Raises:
        ValueError: If the packaged file is damaged (a line that is not a JSON object with
            those three string fields).
    """
    resource = resources.files("rerank_cache") / "data" / _CORPUS_FILE
    documents: list[dict[str, str]] = []
    for number, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not all(
            isinstance(record.get(name), str) for name in _FIELDS
        ):
            raise ValueError(f"{_CORPUS_FILE} line {number}: expected id, title and content")
        documents.append({name: record[name] for name in _FIELDS})
    return documents


def embed(text: str, dim: int = DEFAULT_DIM) -> list[float]:
    """Embed ``text`` as a deterministic, L2-normalised hashed bag of words.

    Each lowercase ``\\w+`` token, except common English function words ("the", "and",
    "how", ...), is hashed with BLAKE2b into one of ``dim`` buckets and a sign (+1 or -1, so
    unrelated collisions tend to cancel), and the counts are scaled to unit length. Texts
    sharing words therefore have a high cosine similarity. The result is the same in every
    process and on every platform (no ``PYTHONHASHSEED`` dependence).

    Args:
        text: The text to embed.
        dim: The vector's dimension.

    Returns:
        ``dim`` floats with an L2 norm of 1, or all zeros when ``text`` has no tokens left.

    Raises:
        ValueError: If ``dim`` is not a positive integer.

    Example:
        >>> vector = embed("Caching search results")
        >>> len(vector), round(sum(x * x for x in vector), 6)
        (64, 1.0)
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, not {dim!r}")
    vector = [0.0] * dim
    for token in _TOKEN.findall(text.lower()):
        if token in _STOP_WORDS:
            continue
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        bucket = int.from_bytes(digest[:7], "big") % dim
        vector[bucket] += 1.0 if digest[7] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        return vector
    return [value / norm for value in vector]


def build_collection(
    path: str | os.PathLike[str],
    corpus: Iterable[Mapping[str, str]] | None = None,
    *,
    dim: int = DEFAULT_DIM,
) -> zvec.Collection:
    """Create a zvec collection at ``path``, fill it with ``corpus`` and return it open.

    The schema has the STRING fields ``title`` and ``content`` and two FP32 vector fields of
    dimension ``dim``: ``content_vec`` (``embed(content)``) and ``title_vec``
    (``embed(title)``), each with an exact (flat) index and the cosine metric. zvec reports
    cosine *distance* as a hit's ``score``: 0.0 is identical, lower is closer.

    The caller owns the collection: call ``close()`` on it when done, and always before
    deleting ``path`` (zvec keeps files open and flushes on close).

    Args:
        path: Where to create the collection. It must not exist yet; missing parent
            directories are created.
        corpus: Documents with string ``id``, ``title`` and ``content``; defaults to
            :func:`load_corpus`.
        dim: The dimension of both vector fields.

    Returns:
        The open ``zvec.Collection``.

    Raises:
        ImportError: If zvec is not installed.
        ValueError: If ``dim`` is invalid, a document lacks a string field or an id
            repeats, or zvec rejects the path (for instance because it already exists).
        RuntimeError: If zvec refuses to insert a document.
    """
    try:
        import zvec
    except ImportError as exc:
        raise ImportError(
            "build_collection needs the optional zvec package: pip install 'rerank-cache[zvec]'"
        ) from exc

    documents = _check_corpus(load_corpus() if corpus is None else corpus)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, not {dim!r}")

    cosine = zvec.FlatIndexParam(metric_type=zvec.MetricType.COSINE)
    schema = zvec.CollectionSchema(
        name="corpus",
        fields=[
            zvec.FieldSchema("title", zvec.DataType.STRING),
            zvec.FieldSchema("content", zvec.DataType.STRING),
        ],
        vectors=[
            zvec.VectorSchema(CONTENT_VECTOR, zvec.DataType.VECTOR_FP32, dim, index_param=cosine),
            zvec.VectorSchema(TITLE_VECTOR, zvec.DataType.VECTOR_FP32, dim, index_param=cosine),
        ],
    )
    collection = zvec.create_and_open(os.fspath(path), schema)
    try:
        for start in range(0, len(documents), _INSERT_BATCH):
            batch = [
                zvec.Doc(
                    id=document["id"],
                    vectors={
                        CONTENT_VECTOR: embed(document["content"], dim),
                        TITLE_VECTOR: embed(document["title"], dim),
                    },
                    fields={"title": document["title"], "content": document["content"]},
                )
                for document in documents[start : start + _INSERT_BATCH]
            ]
            # zvec reports per-document failures as statuses instead of raising.
            for document, status in zip(batch, collection.insert(batch), strict=True):
                if not status.ok():
                    raise RuntimeError(
                        f"zvec could not insert document {document.id!r}: {status.message()}"
                    )
    except BaseException:
        collection.close()
        raise
    return collection


def _check_corpus(corpus: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    documents = list(corpus)
    seen: set[str] = set()
    for position, document in enumerate(documents):
        for name in _FIELDS:
            if not isinstance(document.get(name), str):
                raise ValueError(f"corpus document {position} has no string field {name!r}")
        if document["id"] in seen:
            raise ValueError(f"corpus document id {document['id']!r} appears more than once")
        seen.add(document["id"])
    return documents
