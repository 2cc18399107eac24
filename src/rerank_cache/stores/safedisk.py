"""A diskcache ``Disk`` that stores only finite floats inline and never unpickles.

diskcache 5.6.3 unpickles any row whose ``mode`` says pickle and any key row with ``raw=0``,
and joins a row's ``filename`` to the cache directory unchecked (CVE-2025-69872, no upstream
fix). Whoever can write ``cache.db`` could run code in every process that reads it, read any
file, or delete one. :class:`SafeDisk` closes all three paths:

* keys must be ``str`` and are stored raw; a non-raw key row is refused on read;
* values must be finite floats and are stored inline (no files, no pickle);
* on read, any row that is not an inline float raises :class:`UnsafeRowError` (an
  ``OSError``, which ``Cache.get`` turns into a miss); no file a row names is ever opened;
* file removal is a no-op: a row's ``filename`` is never trusted.
"""

from __future__ import annotations

import math
from typing import Any

from diskcache import Disk
from diskcache.core import MODE_RAW

__all__ = ["SafeDisk", "UnsafeRowError"]


class UnsafeRowError(OSError):
    """A cache row is not an inline float (tampered or written by other software)."""


class SafeDisk(Disk):  # type: ignore[misc]  # diskcache ships no type information
    """Serialisation that accepts only ``str`` keys and finite ``float`` values."""

    def put(self, key: Any) -> tuple[str, bool]:
        """Store a key: only ``str`` keys, always raw."""
        if type(key) is not str:
            raise TypeError(f"score cache keys must be str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> str:
        """Read a key back; anything but a raw ``str`` is refused, never unpickled."""
        if not raw or type(key) is not str:
            raise UnsafeRowError("refusing a cache key that is not a raw string")
        return key

    def store(self, value: Any, read: bool, key: Any = None) -> tuple[int, int, None, float]:
        """Store a value: only finite floats, inline."""
        if read or type(value) is not float or not math.isfinite(value):
            raise TypeError("score cache values must be finite floats")
        return 0, MODE_RAW, None, value

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> float:
        """Read a value back; anything but an inline finite float is refused."""
        if (
            mode != MODE_RAW
            or filename is not None
            or read
            or type(value) is not float
            or not math.isfinite(value)
        ):
            raise UnsafeRowError("refusing a cache row that is not an inline float")
        return value

    def remove(self, file_path: Any) -> None:
        """Never delete files: a row's ``filename`` may have been planted."""
        return
