"""Documents: the package's own :class:`Doc` and the protocol zvec's ``Doc`` also meets.

rerank-cache works without zvec. It accepts any object shaped like ``zvec.Doc`` (an ``id``,
a ``score``, ``fields``, ``vectors``, ``field(name)`` and ``_replace(**changes)``) and returns
objects of the caller's own type, rebuilt with ``_replace(score=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import ConfigurationError

__all__ = ["Doc", "DocLike", "read_doc"]

D = TypeVar("D", bound="DocLike")


@runtime_checkable
class DocLike(Protocol):
    """Anything shaped like ``zvec.Doc``; rerankers read ``id`` and ``field()``."""

    @property
    def id(self) -> Any:
        """The document id (deduplication key)."""

    @property
    def score(self) -> float | None:
        """The retrieval or rerank score."""

    def field(self, name: str) -> Any:
        """The value of scalar field ``name``: None when missing (zvec's ``Doc`` gives ``{}``)."""

    def _replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (zvec's spelling, kept for compatibility)."""


class Doc:
    """A retrieved document, shaped like ``zvec.Doc`` so the package works without zvec.

    Args:
        id: the document id.
        score: the retrieval score, replaced by the rerank score in results.
        vectors: named vectors (kept as given).
        fields: scalar fields; the reranker reads its ``rerank_field`` from here.

    Example:
        >>> d = Doc("d1", fields={"content": "hello"})
        >>> d.field("content"), d.field("missing")
        ('hello', None)
        >>> d._replace(score=0.5).score
        0.5
    """

    __slots__ = ("fields", "id", "score", "vectors")

    def __init__(
        self,
        id: str,
        score: float | None = None,
        vectors: Mapping[str, Any] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.score = score
        self.vectors: dict[str, Any] = dict(vectors) if vectors else {}
        self.fields: dict[str, Any] = dict(fields) if fields else {}

    def field(self, name: str) -> Any:
        """Return field ``name``, or None when the document has no such field."""
        return self.fields.get(name)

    def has_field(self, name: str) -> bool:
        """Return whether the document has field ``name``."""
        return name in self.fields

    def vector(self, name: str) -> Any:
        """Return vector ``name``, or None when the document has no such vector."""
        return self.vectors.get(name)

    def _replace(self, **changes: Any) -> Doc:
        """Return a copy with ``changes`` (``id``, ``score``, ``fields``, ``vectors``) applied.

        The copy has its own ``fields`` and ``vectors`` dicts (changing them leaves this
        document as it was).
        """
        unknown = changes.keys() - _ATTRIBUTES
        if unknown:
            raise TypeError(f"Doc has no attribute(s) {sorted(unknown)}")
        # Built without __init__: a rerank copies every returned document, so the copy is
        # kept to the four attribute stores and two dict copies.
        copy = _new_doc(Doc)
        get = changes.get
        copy.id = get("id", self.id)
        copy.score = get("score", self.score)
        vectors, fields = get("vectors", self.vectors), get("fields", self.fields)
        copy.vectors = dict(vectors) if vectors else {}
        copy.fields = dict(fields) if fields else {}
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Doc):
            return NotImplemented
        return (self.id, self.score, self.fields, self.vectors) == (
            other.id,
            other.score,
            other.fields,
            other.vectors,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like zvec.Doc

    def __repr__(self) -> str:
        return f"Doc(id={self.id!r}, score={self.score!r}, fields={self.fields!r})"


_ATTRIBUTES = frozenset({"id", "score", "fields", "vectors"})
_new_doc = object.__new__


def read_doc(doc: Any, rerank_field: str, where: str) -> tuple[Any, Any]:
    """Return a document's ``id`` (checked hashable) and the value of ``rerank_field``.

    ``where`` names the document's place in the input (``query_results['a'][2]``). Whatever
    the caller's object does wrong (no ``id`` or ``field()``, an unhashable id, a ``field()``
    that raises) becomes a :class:`ConfigurationError` naming that place, the cause chained.

    Raises:
        ConfigurationError: the object is not a usable document.

    Example:
        >>> read_doc(Doc("d1", fields={"content": "hi"}), "content", "query_results[0][0]")
        ('d1', 'hi')
    """
    kind = type(doc).__name__
    try:
        doc_id = doc.id
        field = doc.field
    except Exception as exc:
        raise ConfigurationError(
            f"{where} is not a document ({kind}): it needs an id and a field() method, "
            "like rerank_cache.Doc or zvec.Doc"
        ) from exc
    try:
        hash(doc_id)
    except Exception as exc:
        raise ConfigurationError(
            f"{where} has an id that cannot be used as a key ({type(doc_id).__name__}): "
            "use a string or a number"
        ) from exc
    try:
        value = field(rerank_field)
    except Exception as exc:
        raise ConfigurationError(
            f"{where}: reading field {rerank_field!r} failed ({type(exc).__name__})"
        ) from exc
    return doc_id, value
