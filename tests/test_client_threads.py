"""The sync path's request threads: one pool per client, kept across calls, bounded per call,
shut down by close(), and never inherited by a forked child."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from rerank_cache import ModelLimits, QwenReRanker, ScoreCache
from rerank_cache.client.core import MIN_POOL_SIZE
from rerank_cache.testing import DashScopeServer

from .helpers import API_KEY, cached, make_docs, run_threads

#: Two documents per request: a rerank of n documents sends n / 2 requests.
SMALL = ModelLimits(max_documents=2, max_item_tokens=4_000, max_request_tokens=30_000)


def request_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rerank-cache")}


def test_threads_are_kept_across_calls_and_shared_by_copies(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """The threads of a call serve the next calls, of the reranker and its with_query copies."""
    r = make_reranker(limits=SMALL, max_concurrency=4)
    before = request_threads()
    r.rerank([make_docs(8, seed=1)])
    first = request_threads() - before
    assert first  # the pool outlives the call
    sent_later = 0
    for i in range(4):
        r.with_query(f"another query {i}").rerank([make_docs(8, seed=1)])
        sent_later += 4
    assert all(t.is_alive() for t in first)
    started_later = len(request_threads() - before - first)
    # A thread starts only when none is idle: at most one per call that raced the last
    # thread of the previous call back to idle, never one per request.
    assert started_later < sent_later
    assert server.stats.requests == 4 + sent_later
    r.close()


def test_close_stops_the_threads_and_the_reranker_stays_usable(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """close() joins the pool's threads; the next call starts new ones; with closes too."""
    before = request_threads()
    with make_reranker(limits=SMALL) as r:
        r.rerank([make_docs(6, seed=2)])
        first = request_threads() - before
        assert first
        r.close()
        assert not any(t.is_alive() for t in first)
        r.close()  # idempotent
        out = r.rerank([make_docs(6, seed=3)], 6)
        assert len(out) == 6
        second = request_threads() - before
        assert second
    assert not any(t.is_alive() for t in second)
    assert server.stats.ok_requests == 6


def test_close_while_other_threads_rerank_lets_them_all_finish(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """close() (or leaving a with_query copy's ``with``) while other threads' requests are
    queued on the shared threads: every call finishes with all its documents; none hangs
    or fails, and the client is left usable."""
    server.latency = 0.3
    base = make_reranker(limits=SMALL, max_concurrency=8)  # 12 calls x 8 > the 64 threads
    started = threading.Barrier(13)
    results: list[int] = []
    lock = threading.Lock()

    def rerank(seed: int) -> None:
        started.wait()
        out = base.with_query(f"query {seed}").rerank([make_docs(16, seed=seed)], 16)
        with lock:
            results.append(len(out))

    def close_twice() -> None:
        started.wait()
        # Once every pool thread holds a request, the rest are queued behind them: close then.
        deadline = time.monotonic() + 60
        while server.stats.max_in_flight < MIN_POOL_SIZE and time.monotonic() < deadline:
            time.sleep(0.005)
        with base.with_query("closer"):
            pass  # leaving it closes the client all copies share
        base.close()

    # Daemons: a call that hangs must fail this test, not keep the test process alive.
    threads = [threading.Thread(target=rerank, args=(seed,), daemon=True) for seed in range(12)]
    threads.append(threading.Thread(target=close_twice, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)  # a hang detector, not a timing
    assert not any(t.is_alive() for t in threads), "a call hung after close()"
    assert results == [16] * 12
    assert server.stats.documents == 12 * 16
    assert len(base.rerank([make_docs(4, seed=99)], 4)) == 4
    base.close()


def test_max_concurrency_bounds_each_call(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """A call has at most max_concurrency requests in flight, though its pool is larger."""
    server.latency = 0.05
    r = make_reranker(limits=SMALL, max_concurrency=3)
    out = r.rerank([make_docs(30, seed=4)], 30)
    assert len(out) == 30
    assert server.stats.requests == 15
    assert 1 <= server.stats.max_in_flight <= 3
    r.close()


def test_many_threads_on_one_reranker_all_finish(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer, cache: ScoreCache
) -> None:
    """More requests wanted at once than the pool has threads: calls queue, none deadlocks,
    and every unique pair is sent exactly once."""
    server.latency = 0.02
    r = cached(make_reranker, cache, limits=SMALL, max_concurrency=8)
    docs = make_docs(160, seed=5)
    results: dict[int, int] = {}

    def work(i: int) -> None:
        # Overlapping slices: 16 threads x 40 documents over 160 unique ones.
        mine = docs[i * 10 : i * 10 + 40] if i < 12 else docs[(i - 12) * 40 : (i - 11) * 40]
        results[i] = len(r.rerank([mine], 40))

    assert run_threads(16, work, timeout=60) == []
    assert results == dict.fromkeys(range(16), 40)
    sent = [text for request in server.requests_log for text in request.documents]
    assert sorted(sent) == sorted({d.field("content") for d in docs})
    r.reranker.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_does_not_use_the_parents_threads(
    make_reranker: Callable[..., QwenReRanker], server: DashScopeServer
) -> None:
    """A child forked after the parent's calls scores through threads of its own."""
    r = make_reranker(limits=SMALL)
    r.rerank([make_docs(6, seed=6)])
    assert request_threads()
    with warnings.catch_warnings():
        # Forking a process with threads is the very case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            code = 0 if len(r.rerank([make_docs(6, seed=7)], 6)) == 6 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60  # a child stuck on the parent's queue never exits
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert server.stats.ok_requests == 6  # three from each process
    # The parent's pool still works.
    assert len(r.rerank([make_docs(6, seed=8)], 6)) == 6
    r.close()


def test_a_netrc_login_does_not_replace_the_api_key(
    server: DashScopeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc entry for the host is not used: the API key header is what is sent."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-the-key\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with DashScopeServer(api_keys=[API_KEY]) as strict:
        r = QwenReRanker("q", rerank_field="content", api_key=API_KEY, base_url=strict.base_url)
        with r:
            assert len(r.rerank([make_docs(3, seed=9)], 3)) == 3
        assert strict.stats.ok_requests == 1
