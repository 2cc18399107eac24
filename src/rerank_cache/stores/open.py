"""Where a store lives, and opening the store a path or URL names.

:func:`default_cache_dir` is where the disk store lives unless told otherwise, and
:func:`secure_directory` what it checks before it uses a directory;
:func:`resolve_cache_url` tells a directory from a Redis URL; :func:`open_store` opens the
store either names (what :meth:`ScoreCache.from_url <rerank_cache.ScoreCache.from_url>`
does). The disk store's class is passed in, so that it can delegate here without this
module importing it; the Redis store is imported only for a Redis URL (it needs the
optional redis-py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ..errors import CacheDirectoryError, ConfigurationError
from .protocols import REDIS_SCHEMES, AdminStore
from .redis_format import CLUSTER_SCHEMES

__all__ = [
    "REDIS_SCHEMES",
    "default_cache_dir",
    "open_store",
    "resolve_cache_url",
    "secure_directory",
]


def default_cache_dir() -> Path:
    """Return the default cache directory.

    ``RERANK_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/rerank-cache``, else
    ``~/.cache/rerank-cache``.
    """
    configured = os.environ.get("RERANK_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rerank-cache"


def secure_directory(path: Path, *, create: bool = True) -> Path:
    """Check (and create, 0700) a cache directory that only the current user controls.

    Raises:
        CacheDirectoryError: the path is a symlink, not a directory, owned by another user,
            or writable by group or others; or it cannot be created.
    """
    path = Path(os.path.abspath(path.expanduser()))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise CacheDirectoryError(f"cache directory {path} does not exist") from None
        try:
            _make_parents(path.parent)
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
        except FileExistsError:
            pass  # another process created it first; checked below
        except OSError as exc:
            raise CacheDirectoryError(
                f"cannot create cache directory {path}: {exc.strerror}"
            ) from None
        info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise CacheDirectoryError(
            f"refusing cache directory {path}: it is a symbolic link. Use the real path."
        )
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirectoryError(f"refusing cache directory {path}: not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheDirectoryError(
            f"refusing cache directory {path}: owned by uid {info.st_uid}, not by you "
            f"(uid {os.getuid()}). Another user could plant entries there."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheDirectoryError(
            f"refusing cache directory {path}: writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}). Run: chmod 700 {path}"
        )
    return path


def _make_parents(path: Path) -> None:
    """Create the missing parents of a cache directory 0700, whatever the umask.

    ``Path.mkdir(parents=True)`` creates them ``0777 & ~umask``: 0777 under a umask of 000,
    so another user could swap the cache directory for their own. Each parent this call
    creates gets 0700; existing ones are left as they are.
    """
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # another process created it first
        os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask


def resolve_cache_url(url: str | os.PathLike[str]) -> Path | str:
    """Return the directory a cache URL or path names, or the URL itself for Redis.

    ``redis://``, ``rediss://``, ``unix://`` and ``redis+cluster://`` / ``rediss+cluster://``
    URLs come back unchanged (a Redis store);
    ``file:///path`` and plain paths come back as an absolute :class:`Path`.

    Raises:
        ConfigurationError: bytes, a ``file://`` URL naming a remote host, or another scheme.
    """
    text = os.fspath(url)
    if isinstance(text, bytes):
        raise ConfigurationError("the cache URL must be text, not bytes")
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in REDIS_SCHEMES or scheme in CLUSTER_SCHEMES:
        return text
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigurationError(
                f"a file URL names a local directory (file:///path/to/dir), got {text!r}"
            )
        return Path(os.path.abspath(url2pathname(parts.path)))
    if scheme:
        raise ConfigurationError(
            f"unsupported cache URL scheme {scheme + '://'!r}: use redis://, rediss://, "
            "unix://, redis+cluster://, rediss+cluster://, file:// or a directory path"
        )
    return Path(os.path.abspath(Path(text).expanduser()))


def open_store(
    url: str | os.PathLike[str], disk_store: Callable[..., AdminStore], /, **kwargs: Any
) -> AdminStore:
    """Open the store ``url`` names: a Redis store, or ``disk_store(directory, **kwargs)``.

    Raises:
        ConfigurationError: the URL has another scheme.
        ImportError: a Redis URL, but redis-py is not installed
            (``pip install 'rerank-cache[redis]'``).
    """
    target = resolve_cache_url(url)
    if isinstance(target, str):
        if urlsplit(target).scheme.lower() in CLUSTER_SCHEMES:
            from .redis_cluster import RedisClusterScoreCache  # needs the optional redis-py

            return RedisClusterScoreCache(target, **kwargs)
        from .redis import RedisScoreCache  # needs the optional redis-py

        return RedisScoreCache(target, **kwargs)
    return disk_store(target, **kwargs)
