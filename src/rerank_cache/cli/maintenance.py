"""``rerank-cache clear``, ``check`` and ``path``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ..errors import CorruptCacheError
from ..stores.disk import ScoreCache
from ..stores.disk_admin import repair_settings
from ..stores.stats import CheckReport
from .errors import EXIT_FAILURE, EXIT_OK, FailureError
from .target import Target, open_redis, open_store, require_writable

__all__ = ["run_check", "run_clear", "run_path"]


def run_clear(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, Path) and not os.path.lexists(target):
        print(f"nothing to clear: no cache at {target}")
        return EXIT_OK
    require_writable(target)
    store, directory = open_store(target)
    with contextlib.closing(store) as cache:
        n = cache.count(model=args.model, expired=args.expired)
        what = "expired scores" if args.expired else "scores"
        scope = f" of model {args.model}" if args.model else ""
        if n == 0:
            present = ""
            if args.model:  # a typo, most likely: say which models there are
                held = sorted(m for m, s in cache.stats().models.items() if m and s.entries)
                present = (
                    f"; models with scores: {', '.join(held)}" if held else "; it holds no scores"
                )
            print(f"nothing to clear: no {what}{scope} in {directory}{present}")
            return EXIT_OK
        if not args.yes:
            if not sys.stdin.isatty():
                raise FailureError("refusing to clear without confirmation: pass --yes")
            answer = input(f"Delete {n:,} {what}{scope} from {directory}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_FAILURE
        clear = cache.expire if args.expired else cache.clear
        deleted = clear(model=args.model)
    print(f"deleted {deleted:,} {what}{scope}")
    return EXIT_OK


def run_check(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        with open_redis(target) as redis_store:
            return _report(redis_store.check(fix=args.fix))
    directory = target
    if not os.path.lexists(directory):
        print(f"ok: no cache at {directory} yet")
        return EXIT_OK
    require_writable(directory)
    if args.fix:  # before opening: the store refuses settings diskcache would apply unchecked
        for message in repair_settings(directory):
            print(f"fixed: {message}")
    try:
        cache = ScoreCache(directory, recover=False)
    except CorruptCacheError:
        if not args.fix:
            raise
        ScoreCache(directory, recover=True).close()
        print(
            f"fixed: the damaged cache file in {directory} was moved aside "
            "(cache.db.corrupt-*); the cache starts empty"
        )
        return EXIT_OK
    with cache:
        return _report(cache.check(fix=args.fix))


def _report(report: CheckReport) -> int:
    for message in report.messages:
        print(f"  {message}")
    if report.fixed:
        print(f"fixed: removed {report.fixed:,} unsafe row(s)")
    status = "ok" if report.ok else "problems found (run with --fix)"
    print(f"{status}: {report.rows:,} rows checked, integrity {report.integrity}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def run_path(args: argparse.Namespace, target: Target) -> int:
    if isinstance(target, str):
        with open_redis(target, ping=False) as redis_store:
            print(redis_store.location)
    else:
        print(target)
    return EXIT_OK
