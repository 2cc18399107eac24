"""Fault injection for the local server: the queue of pending faults and what each one does.

Internal to :mod:`rerank_cache.testing`; :data:`MALFORM_KINDS` is public (re-exported there).
:class:`~rerank_cache.testing.DashScopeServer` checks its arguments with the builders here
and queues the faults; each request takes the first queued fault that applies to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from .wire import Reply, default_error, is_int

__all__ = [
    "MALFORM_KINDS",
    "Fault",
    "FaultQueue",
    "apply_malform",
    "body_fault",
    "delay_fault",
    "error_fault",
    "malform_fault",
    "trickle_fault",
]

MALFORM_KINDS: Final = frozenset(
    {
        "missing_output",
        "index_out_of_range",
        "missing_score",
        "nan_score",
        "fewer_results",
        "not_json",
    }
)
"""The kinds of wrong 200 responses ``DashScopeServer.malform_next`` can produce."""


@dataclass(frozen=True)
class Fault:
    """One injected fault, applied to one request.

    Attributes:
        kind: ``"fail"``, ``"drop"``, ``"delay"``, ``"malform"``, ``"body"`` (answer
            ``status`` with ``body`` as is) or ``"trickle"`` (answer normally, sending the
            body ``chunk`` bytes every ``seconds``).
        match: Apply only to a request with a document containing this text.
    """

    kind: str
    status: int = 0
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    malform: str | None = None
    body: bytes | None = None
    chunk: int = 1
    match: str | None = None

    @property
    def label(self) -> str:
        """How the request log names this fault (``RecordedRequest.fault``)."""
        return f"malform:{self.malform}" if self.kind == "malform" else self.kind


def error_fault(
    status: int, *, code: str | None, message: str | None, retry_after: float | str | None
) -> Fault:
    """A checked ``"fail"`` fault; code and message default by status.

    Raises:
        ValueError: If ``status`` or ``retry_after`` is invalid.
    """
    if not is_int(status) or not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error status between 400 and 599")
    header: str | None = None
    if isinstance(retry_after, str):
        if "\r" in retry_after or "\n" in retry_after:
            raise ValueError("retry_after must not contain line breaks")
        header = retry_after
    elif retry_after is not None:
        if isinstance(retry_after, bool) or retry_after < 0 or not math.isfinite(retry_after):
            raise ValueError("retry_after must be a finite number of seconds >= 0")
        header = format(retry_after, "g") if isinstance(retry_after, float) else str(retry_after)
    default_code, default_message = default_error(status)
    return Fault(
        "fail",
        status=status,
        code=code or default_code,
        message=message or default_message,
        retry_after=header,
    )


def delay_fault(seconds: float) -> Fault:
    """A checked ``"delay"`` fault.

    Raises:
        ValueError: If ``seconds`` is negative or not finite.
    """
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError("seconds must be a finite number >= 0")
    return Fault("delay", seconds=float(seconds))


def body_fault(status: int, body: object) -> Fault:
    """A checked ``"body"`` fault: ``body`` (any JSON value, or raw ``bytes``) with ``status``.

    Raises:
        ValueError: If ``status`` is not 200-599 or ``body`` cannot be written as JSON.
    """
    if not is_int(status) or not 200 <= status <= 599:
        raise ValueError("status must be an HTTP status between 200 and 599")
    if isinstance(body, bytes):
        raw = body
    else:
        try:
            # Python's json writes integers of any size, as a hostile server could.
            raw = json.dumps(body, allow_nan=True).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"body cannot be written as JSON: {exc}") from None
    return Fault("body", status=status, body=raw)


def trickle_fault(seconds: float, chunk: int) -> Fault:
    """A checked ``"trickle"`` fault.

    Raises:
        ValueError: If ``seconds`` is negative or not finite, or ``chunk`` is not >= 1.
    """
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError("seconds must be a finite number >= 0")
    if not is_int(chunk) or chunk < 1:
        raise ValueError("chunk must be an integer >= 1")
    return Fault("trickle", seconds=float(seconds), chunk=chunk)


def malform_fault(kind: str) -> Fault:
    """A checked ``"malform"`` fault.

    Raises:
        ValueError: If ``kind`` is not one of :data:`MALFORM_KINDS`.
    """
    if kind not in MALFORM_KINDS:
        raise ValueError(f"unknown malform kind {kind!r}; expected one of {sorted(MALFORM_KINDS)}")
    return Fault("malform", malform=kind)


class FaultQueue:
    """Pending faults in arrival order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()

    def add(self, fault: Fault, times: int, match: str | None = None) -> None:
        """Queue ``fault`` for the next ``times`` requests (that contain ``match``, if given).

        Raises:
            ValueError: If ``times`` is not an integer >= 1.
        """
        if not is_int(times) or times < 1:
            raise ValueError("times must be an integer >= 1")
        if match is not None:
            fault = dataclasses.replace(fault, match=match)
        with self._lock:
            self._faults.extend([fault] * times)

    def take(self, documents: tuple[str, ...]) -> Fault | None:
        """Pop the first queued fault that applies to a request with these documents."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.match is None or any(fault.match in d for d in documents):
                    del self._faults[index]
                    return fault
        return None

    def __len__(self) -> int:
        """How many faults are still waiting for a request."""
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._faults.clear()


def apply_malform(reply: Reply, kind: str, n_documents: int) -> None:
    """Spoil a 200 ``reply`` (for ``n_documents`` documents) the way ``kind`` says."""
    payload = reply.payload
    assert payload is not None
    reply.fault = f"malform:{kind}"
    if kind == "not_json":
        reply.payload = None
        reply.raw_body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return
    if kind == "missing_output":
        del payload["output"]
        return
    results: list[dict[str, Any]] = payload["output"]["results"]
    if kind == "fewer_results":
        results.pop()
    elif kind == "index_out_of_range":
        results[0]["index"] = n_documents
    elif kind == "missing_score":
        del results[0]["relevance_score"]
    elif kind == "nan_score":
        results[0]["relevance_score"] = math.nan
