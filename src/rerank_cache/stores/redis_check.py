"""Checking a Redis namespace: scan every score, compare with the entry counters, repair.

Slow on purpose (a ``SCAN`` of the whole namespace), so it runs only from
:meth:`RedisScoreCache.check <rerank_cache.stores.redis.RedisScoreCache.check>`. Redis
errors propagate; the store turns them into :class:`~rerank_cache.errors.CacheError`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..keys import model_of
from .redis_format import Bucket, bucket_field, int_or_none, parse_entry, text
from .stats import COUNTER_NAMES, CheckReport

if TYPE_CHECKING:
    import redis

__all__ = ["SCAN_COUNT", "check_namespace", "scan_batches"]

#: Keys per ``SCAN`` step, and per ``UNLINK``.
SCAN_COUNT = 1_000


def scan_batches(client: redis.Redis, pattern: str) -> Iterator[list[Any]]:
    """The keys matching ``pattern``, in batches of at most :data:`SCAN_COUNT`."""
    batch: list[Any] = []
    for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= SCAN_COUNT:
            yield batch
            batch = []
    if batch:
        yield batch


def check_namespace(
    client: redis.Redis,
    *,
    pattern: str,
    store_key: Callable[[str], str | None],
    mget: Callable[[list[Any]], list[Any]],
    counters_key: str,
    entries_key: str,
    ttl_ms: int | None,
    fix: bool,
    transaction: bool = True,
) -> CheckReport:
    """Scan the scores matching ``pattern``; with ``fix``, delete bad keys and recount.

    ``store_key`` gives the store key a Redis key name holds (None: not one of ours);
    ``mget`` reads a batch of names (a cluster splits it by slot); ``ttl_ms`` is the store's
    time to live, used to rebuild entry buckets of keys whose remaining time is shorter.
    """
    messages: list[str] = []
    rows = 0
    unsafe: list[bytes | str] = []
    found: Counter[str] = Counter()
    rebuilt: Counter[str] = Counter()
    now_ms = int(time.time() * 1000)
    for batch in scan_batches(client, pattern):
        values = mget(batch)
        ttls: list[int] = []
        if fix:
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.pttl(key)
            ttls = pipe.execute()
        for index, (key, raw) in enumerate(zip(batch, values, strict=True)):
            name = store_key(text(key))
            if raw is None and not client.exists(key):
                continue  # expired or deleted while we scanned
            rows += 1
            model = None if name is None else model_of(name)
            entry = None if raw is None else parse_entry(raw)
            if entry is None or model is None:
                unsafe.append(key)
                continue
            expires = entry[1]
            if expires is not None and expires <= now_ms:
                continue  # kept past its ttl for on_error="stale": not an entry
            found[model] += 1
            if fix:
                remaining = int(ttls[index]) if expires is None else expires - now_ms
                if remaining < 0:
                    rebuilt[bucket_field(model, None, now_ms)] += 1
                else:
                    ttl = max(remaining, ttl_ms or 0)
                    rebuilt[bucket_field(model, ttl, now_ms + remaining - ttl)] += 1
    bad_fields = _bad_hash_fields(client, counters_key, entries_key)
    counted: Counter[str] = Counter()
    if entries_key not in bad_fields or bad_fields[entries_key]:
        for field, value in client.hgetall(entries_key).items():
            bucket, count = Bucket.parse(field), int_or_none(value)
            if bucket is not None and count and bucket.live(now_ms):
                counted[bucket.model] += count
    counted = +counted  # drop models counted down to zero
    fixed = 0
    if unsafe:
        messages.append(f"{len(unsafe)} unsafe key(s): not a score of ours (never read)")
    for name, fields in bad_fields.items():
        messages.append(
            f"{name}: {len(fields)} malformed field(s) (ignored)"
            if fields
            else f"{name} is not a hash (counters written there are lost)"
        )
    if counted != found:
        messages.append(
            f"entry counters say {sum(counted.values()):,}, the scan found "
            f"{sum(found.values()):,}: keys were evicted or deleted outside "
            "rerank-cache" + ("" if fix else " (--fix recounts)")
        )
    if fix:
        for start in range(0, len(unsafe), SCAN_COUNT):
            fixed += int(client.unlink(*unsafe[start : start + SCAN_COUNT]))
        for key, fields in bad_fields.items():
            if fields:
                client.hdel(key, *fields)
            else:
                client.delete(key)  # not a hash: ours were lost anyway
        pipe = client.pipeline(transaction=transaction)
        pipe.delete(entries_key)
        if rebuilt:
            mapping: dict[Any, Any] = dict(rebuilt)
            pipe.hset(entries_key, mapping=mapping)
        pipe.execute()
        messages.append(f"recounted {sum(found.values()):,} entries")
    return CheckReport(
        ok=(not unsafe or fixed == len(unsafe)) and (not bad_fields or fix),
        integrity="ok",
        rows=rows,
        unsafe_rows=len(unsafe),
        fixed=fixed,
        messages=messages,
    )


def _bad_hash_fields(
    client: redis.Redis, counters_key: str, entries_key: str
) -> dict[str, list[bytes | str]]:
    """Malformed fields of the two hashes; an empty list: the key is not a hash at all."""
    bad: dict[str, list[bytes | str]] = {}
    for name in (counters_key, entries_key):
        if client.type(name) not in (b"hash", "hash", b"none", "none"):
            bad[name] = []
            continue
        for field, value in client.hgetall(name).items():
            if name == counters_key:
                counter, sep, _ = text(field).partition(":")
                good = bool(sep) and counter in COUNTER_NAMES
            else:
                good = Bucket.parse(field) is not None
            if not good or int_or_none(value) is None:
                bad.setdefault(name, []).append(field)
    return bad
