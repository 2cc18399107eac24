"""Who may be answered: pass-through keys DashScope accepted, or the proxy's own tokens.

Keys and tokens are kept only as keyed BLAKE2b digests under a salt drawn when the process
starts, so a memory dump or a log line can never give one back, and digests from one run
mean nothing in the next.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from .wire import ProxyError

__all__ = ["AcceptedKeys", "TokenSet", "bearer", "no_key_error", "read_tokens"]


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, or None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


def _digest(salt: bytes, *parts: str) -> bytes:
    h = hashlib.blake2b(key=salt, digest_size=32)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        # Length-prefixed so ("ab", "c") and ("a", "bc") never collide.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


class AcceptedKeys:
    """The (key, model) pairs DashScope accepted recently, as salted digests. Thread-safe.

    Args:
        ttl: seconds a key stays trusted after DashScope last accepted it.
        max_entries: most pairs remembered; the least recently accepted go first.
        clock: a monotonic clock; by default ``time.monotonic``, looked up on each use.
    """

    def __init__(
        self,
        *,
        ttl: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be positive and max_entries at least 1")
        self._salt = os.urandom(32)
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._until: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.monotonic()

    def __repr__(self) -> str:
        return f"AcceptedKeys(ttl={self._ttl}, entries={len(self._until)})"

    def __len__(self) -> int:
        return len(self._until)

    def known(self, key: str, model: str) -> bool:
        """Whether DashScope accepted ``key`` for ``model`` within the last ``ttl`` seconds."""
        digest = _digest(self._salt, key, model)
        with self._lock:
            until = self._until.get(digest)
            if until is None:
                return False
            if until <= self._now():
                del self._until[digest]
                return False
            return True

    def accept(self, key: str, model: str) -> None:
        """Remember that DashScope just accepted ``key`` for ``model``."""
        digest = _digest(self._salt, key, model)
        with self._lock:
            self._until[digest] = self._now() + self._ttl
            self._until.move_to_end(digest)
            while len(self._until) > self._max:
                self._until.popitem(last=False)

    def forget(self, key: str, model: str) -> None:
        """Stop trusting ``key`` for ``model`` (DashScope refused it)."""
        digest = _digest(self._salt, key, model)
        with self._lock:
            self._until.pop(digest, None)


class TokenSet:
    """The tokens clients present in server-key mode, compared in constant time.

    Args:
        tokens: the accepted tokens (kept only as salted digests).

    Raises:
        ValueError: no tokens.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._salt = os.urandom(32)
        self._digests = tuple(_digest(self._salt, token) for token in tokens)
        if not self._digests:
            raise ValueError("no tokens: the tokens file must hold at least one")

    def __repr__(self) -> str:
        return f"TokenSet({len(self._digests)} tokens)"

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, token: str | None) -> None:
        """Raise the 401 DashScope gives unless ``token`` is one of the tokens."""
        if token is None:
            raise no_key_error()
        presented = _digest(self._salt, token)
        # Every digest is compared, so the time taken says nothing about which one matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise ProxyError(401, "InvalidApiKey", "Invalid API-key provided.")


def no_key_error() -> ProxyError:
    """The 401 DashScope gives a request without a credential."""
    return ProxyError(401, "InvalidApiKey", "No API-key provided.")


def read_tokens(path: str | os.PathLike[str]) -> TokenSet:
    """Read a tokens file: one token per line; blank lines and ``#`` comments are skipped.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no token.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return TokenSet(tokens)
