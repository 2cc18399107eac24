"""Where the store is (a directory or a Redis URL), opening it, and refusing an unwritable one."""

from __future__ import annotations

import argparse
import os
import stat
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..stores.disk import ScoreCache
from ..stores.open import default_cache_dir, resolve_cache_url
from ..stores.protocols import AdminStore
from ..stores.sqlite import DB_NAME
from .errors import FailureError

if TYPE_CHECKING:
    from ..stores.redis import RedisScoreCache

__all__ = ["Target", "open_redis", "open_store", "require_writable", "resolve_target"]

#: Where the store is: a cache directory, or the URL of a Redis server.
Target = Path | str


def resolve_target(args: argparse.Namespace) -> Target:
    """The store: ``--cache-dir``, ``--cache-url``, ``$RERANK_CACHE_URL``, else the default dir."""
    if args.cache_dir:
        return Path(os.path.abspath(Path(args.cache_dir).expanduser()))
    url = args.cache_url or os.environ.get("RERANK_CACHE_URL", "").strip()
    if not url:
        return Path(os.path.abspath(default_cache_dir()))
    try:
        return resolve_cache_url(url)
    except ConfigurationError as exc:
        raise FailureError(f"RERANK_CACHE_URL / --cache-url: {exc}") from None


def open_redis(url: str, *, ping: bool = True, **kwargs: Any) -> RedisScoreCache:
    """Open a Redis store; unless ``ping`` is false, fail in one line if it cannot be reached."""
    from urllib.parse import urlsplit

    from ..stores.redis import RedisScoreCache  # needs the optional redis-py
    from ..stores.redis_format import CLUSTER_SCHEMES

    cluster = urlsplit(url).scheme.lower() in CLUSTER_SCHEMES
    if cluster:
        from ..stores.redis_cluster import RedisClusterScoreCache

    store = (RedisClusterScoreCache if cluster else RedisScoreCache)(url, **kwargs)
    if ping:
        try:
            store.ping()
        except BaseException:
            store.close()
            raise
    return store


def open_store(target: Target, **kwargs: Any) -> tuple[AdminStore, str]:
    """Open the store at ``target``; return it and where it is, for messages."""
    if isinstance(target, str):
        store = open_redis(target, **kwargs)
        return store, store.location
    return ScoreCache(target, **kwargs), str(target)


# -- an unwritable cache directory ----------------------------------------------------------

# Linux's FS_IOC_GETFLAGS, _IOR('f', 1, long), and its immutable and append-only flags.
_FS_IOC_GETFLAGS = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _immutable(path: Path) -> bool:
    """Whether ``path`` carries an immutable or append-only attribute (chattr / chflags)."""
    flags = getattr(os.stat(path), "st_flags", 0)  # BSD and macOS
    if flags & (getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0)):
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (ImportError, OSError):
        return False
    try:
        (value,) = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])
    except OSError:  # a file system without attributes
        return False
    finally:
        os.close(fd)
    return bool(value & (_FS_IMMUTABLE_FL | _FS_APPEND_FL))


def _unwritable(directory: Path) -> str | None:
    """Why the cache in ``directory`` cannot be written, and what to do; None if it can.

    A directory that does not exist yet is judged by the nearest existing parent, where it
    would be created. Writers would fail open on every write (stores nothing, counts
    nothing), so commands refuse such a cache rather than report it as empty.
    """
    existing = directory
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    checks = [existing]
    if existing == directory:
        checks += [p for p in (directory / DB_NAME,) if os.path.lexists(p)]
    for path in checks:
        need = os.W_OK | (os.X_OK if path.is_dir() else 0)
        if os.access(path, need):
            continue
        role = "the cache directory" if path == directory else "the cache file"
        if path != directory and path.is_dir():
            role = f"{path}, where the cache directory {directory} would be created,"
        else:
            role = f"{role} {path}"
        try:
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        if read_only:
            return (
                f"{role} is on a read-only file system. Remount it read-write, or point "
                "--cache-dir (or RERANK_CACHE_DIR) at a writable directory."
            )
        if _immutable(path):
            return (
                f"{role} is immutable (chattr +i or chflags). Remove the flag: "
                f"sudo chattr -i {path} (macOS: chflags nouchg {path}), or use another directory."
            )
        info = os.stat(path)
        mode = stat.S_IMODE(info.st_mode)
        fix = f"chmod 700 {path}" if path.is_dir() else f"chmod 600 {path}"
        return (
            f"{role} is not writable: permission denied (mode {mode:o}, owner uid "
            f"{info.st_uid}). Run: {fix}"
        )
    return None


def require_writable(target: Target) -> None:
    if isinstance(target, Path):
        problem = _unwritable(target)
        if problem is not None:
            raise FailureError(problem)
