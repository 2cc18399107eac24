"""Live counts (issue 14 item 1): every lookup reaches ``stats`` in other processes soon,
whether its process is busy, idle, or dropped the store object without closing it.

The serving side runs in a child process that stays alive and idle; the reader polls
``rerank-cache stats --json`` with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rerank_cache import ScoreCache
from rerank_cache.cli import main
from rerank_cache.stores.disk_admin import read_stats

from .redis_fixture import RedisServer

SERVING = """
import gc, sys
from rerank_cache import ScoreCache
store = ScoreCache.from_url(sys.argv[1], stats_flush_interval=0.2)
store.put_many({"k": 0.5}, model="m")
found = store.get_many(["k", "absent"])
store.record_lookup("m", hits=len(found), misses=1)
if sys.argv[2] == "drop":
    del store, found
    gc.collect()
print("ready", flush=True)
sys.stdin.read()  # alive and idle until the test closes stdin
"""


@pytest.fixture
def serving() -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(where: str, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVING, where, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def stats_from_cli(where: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    option = "--cache-url" if "://" in where else "--cache-dir"
    assert main([option, where, "stats", "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def poll(read: Callable[[], dict[str, object]], *, hits: int, deadline: float = 30.0) -> None:
    """Read until ``hits`` show, failing after ``deadline`` seconds (generous: 2 cores, and
    other test runs on them; the flush itself runs every 0.2 s)."""
    for _ in range(int(deadline / 0.05)):
        data = read()
        if data["hits"] == hits:
            assert data["misses"] == 1
            return
        time.sleep(0.05)  # a poll interval, not a wait for an outcome
    raise AssertionError(f"hits never reached {hits}: {data}")


@pytest.mark.parametrize("mode", ["idle", "drop"])
def test_idle_process_hits_reach_stats_in_another_process(
    tmp_path: Path,
    mode: str,
    serving: Callable[[str, str], subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = str(tmp_path / "c")
    proc = serving(where, mode)
    poll(lambda: stats_from_cli(where, capsys), hits=1)
    assert proc.poll() is None  # it is still alive: no exit-time flush did this


@pytest.mark.parametrize("mode", ["idle", "drop"])
def test_idle_process_hits_reach_stats_on_redis(
    redis_server: RedisServer,
    mode: str,
    serving: Callable[[str, str], subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = f"{redis_server.url}?namespace=live-{mode}"
    proc = serving(where, mode)
    poll(lambda: stats_from_cli(where, capsys), hits=1)
    assert proc.poll() is None


def test_lookups_are_written_by_the_background_flush_not_the_caller(tmp_path: Path) -> None:
    with ScoreCache(tmp_path / "slow", stats_flush_interval=3600) as slow:
        slow.put_many({"k": 0.5}, model="m")
        slow.record_lookup("m", hits=1, misses=1)
        assert read_stats(tmp_path / "slow").hits == 0  # not due for an hour: nothing written
    assert read_stats(tmp_path / "slow").hits == 1  # close() writes them
    with ScoreCache(tmp_path / "c", stats_flush_interval=0.2) as store:
        store.put_many({"k": 0.5}, model="m")
        store.record_lookup("m", hits=1, misses=1)
        poll(lambda: read_stats(tmp_path / "c").model_dump(), hits=1)


def test_stats_include_every_open_store_object_on_the_location(tmp_path: Path) -> None:
    with (
        ScoreCache(tmp_path / "c", stats_flush_interval=3600) as a,
        ScoreCache(tmp_path / "c", stats_flush_interval=3600) as b,
        ScoreCache(tmp_path / "other", stats_flush_interval=3600) as other,
    ):
        a.record_lookup("m", hits=2, misses=1)
        assert b.stats().hits == 2
        assert other.stats().hits == 0
        dropped = ScoreCache(tmp_path / "c", stats_flush_interval=3600)
        dropped.record_lookup("m", hits=3, misses=0)
        del dropped
        gc.collect()
        # Handed to the flusher, then written: this process reports them either way, though
        # a read during the write itself may miss them for that instant.
        poll(lambda: b.stats().model_dump(), hits=5)
    assert read_stats(tmp_path / "c").hits == 5
