"""The rerank-cache command, in-process and as a subprocess, against the local server."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from pydantic import ValidationError

from rerank_cache import (
    CachedReRanker,
    CacheStats,
    Doc,
    LineWarmed,
    QwenReRanker,
    ScoreCache,
    read_stats,
)
from rerank_cache.cli import WarmProgress, main
from rerank_cache.cli.stats import stats_json
from rerank_cache.stores.stats import STATS_SCHEMA_VERSION, WarmStats
from rerank_cache.testing import DashScopeServer

from .helpers import API_KEY, ROOT, log_lines, run_python, write_log


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, server: DashScopeServer, tmp_path: Path) -> Path:
    """Point the CLI at the local server; return the cache directory to use."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", server.base_url)
    return tmp_path / "cli-cache"


def run_cli(
    *args: str, env_extra: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_python(
        "-m", "rerank_cache", *args, env={**os.environ, **(env_extra or {})}, stdin=stdin
    )


def test_warm_then_rerank_sends_nothing(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """After warm, reranking the same queries and texts is served from the cache."""
    log = write_log(tmp_path / "log.jsonl", log_lines(12))
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    out = capsys.readouterr().out
    assert "scored                  96" in out
    sent = server.stats.documents
    assert sent == 96
    with ScoreCache(env) as cache:
        base = QwenReRanker("x", rerank_field="text", api_key=API_KEY, base_url=server.base_url)
        for line in log_lines(12):
            obj = json.loads(line)
            docs = [Doc(str(i), fields={"text": t}) for i, t in enumerate(obj["documents"])]
            CachedReRanker(base.with_query(obj["query"]), cache).rerank([docs])
    assert server.stats.documents == sent


def test_second_warm_sends_nothing(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warming the same file twice sends nothing the second time."""
    log = write_log(tmp_path / "log.jsonl", log_lines(10))
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    requests = server.stats.requests
    capsys.readouterr()
    assert main(["--cache-dir", str(env), "warm", str(log), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert server.stats.requests == requests
    assert summary["already_cached"] == summary["pairs_seen"] == 80
    assert summary["scored"] == summary["api_requests"] == 0


def test_bad_line_7_stops_and_keeps_lines_1_to_6(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed line 7 exits 1 naming line 7; lines 1-6 stay warmed."""
    lines = log_lines(10)
    lines[6] = '{"query": "broken", "documents": "not a list"}'
    log = write_log(tmp_path / "log.jsonl", lines)
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 1
    err = capsys.readouterr().err
    assert "line 7" in err
    assert "'documents' must be a list" in err
    assert "Traceback" not in err
    assert server.stats.documents == 6 * 8
    # Re-running lines 1-6 finds everything cached.
    server.reset_stats()
    write_log(log, lines[:6])
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    assert server.stats.requests == 0


def test_skip_invalid_reports_and_continues(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-invalid reports bad lines on stderr and warms the rest."""
    lines = log_lines(5)
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"query": "", "documents": []}))
    log = write_log(tmp_path / "log.jsonl", lines)
    assert main(["--cache-dir", str(env), "warm", str(log), "--skip-invalid", "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped line 3: not valid JSON" in captured.err
    assert "skipped line 5: 'query' must be a non-empty string" in captured.err
    summary = json.loads(captured.out)
    assert (summary["lines_read"], summary["lines_skipped"], summary["scored"]) == (7, 2, 40)


def test_dry_run_sends_nothing_and_estimates(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run sends nothing and reports pairs to send, tokens and cost."""
    log = write_log(tmp_path / "log.jsonl", log_lines(6))
    assert main(["--cache-dir", str(env), "warm", str(log), "--dry-run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert server.stats.requests == 0
    assert summary["dry_run"] is True
    assert summary["scored"] == 48
    assert summary["estimated_tokens"] > 0
    assert summary["estimated_cost"]["gte-rerank-v2"] > 0


def test_stats_match_server_counts(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats --json totals equal what the local server counted."""
    log = write_log(tmp_path / "log.jsonl", log_lines(9) + log_lines(3, model="qwen3-rerank"))
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    capsys.readouterr()
    assert main(["--cache-dir", str(env), "stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    srv = server.stats
    assert data["schema_version"] == 2
    assert data["api_requests"] == srv.ok_requests
    assert data["documents_sent"] == srv.documents == 96
    assert data["tokens_billed"] == srv.tokens  # warming is on the bill
    # Warming is not an application's lookup: no hits, misses or savings from it.
    assert (data["entries"], data["hits"], data["misses"]) == (96, 0, 0)
    assert (data["hit_rate"], data["estimated_tokens_saved"]) == (0.0, 0)
    assert data["warm"] == {
        "lines": 24,
        "looked_up": 192,
        "already_cached": 96,
        "sent": 96,
        "tokens_billed": srv.tokens,
    }
    assert set(data["models"]) == {"gte-rerank-v2", "qwen3-rerank"}
    assert data["models"]["qwen3-rerank"]["entries"] == 24
    assert data["models"]["qwen3-rerank"]["warm"]["lines"] == 6
    # An application reranking warmed pairs: those are hits, and they save tokens.
    line = json.loads(log_lines(1)[0])
    app = QwenReRanker(
        line["query"], api_key=API_KEY, base_url=server.base_url, rerank_field="text"
    )
    with CachedReRanker(app, ScoreCache(env)) as reranker:
        reranker.score_texts(line["documents"])
    assert main(["--cache-dir", str(env), "stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["hits"], data["misses"], data["warm"]["lines"]) == (8, 0, 24)
    assert data["estimated_tokens_saved"] > 0
    assert server.stats.documents == 96
    assert main(["--cache-dir", str(env), "stats"]) == 0
    table = capsys.readouterr().out
    assert "hit rate                  100.0%" in table
    assert "    lines                   24" in table
    assert "qwen3-rerank" in table


#: ``CacheStats.model_dump(mode="json")`` of schema version 1: hits included warming's
#: lookups, and there was no ``warm``.
STATS_V1: dict[str, Any] = {
    "schema_version": 1,
    "directory": "/var/cache/rerank-cache",
    "entries": 2,
    "expired_entries": 0,
    "size_bytes": 32768,
    "hits": 4,
    "misses": 2,
    "hit_rate": 4 / 6,
    "api_requests": 1,
    "documents_sent": 2,
    "tokens_billed": 40,
    "duplicate_sends": 0,
    "store_errors": 0,
    "fallbacks": 0,
    "stale_served": 0,
    "oldest_entry": "2026-01-01T00:00:00Z",
    "newest_entry": "2026-01-01T00:00:00Z",
    "models": {
        "gte-rerank-v2": {
            "entries": 2,
            "hits": 4,
            "misses": 2,
            "api_requests": 1,
            "documents_sent": 2,
            "tokens_billed": 40,
            "duplicate_sends": 0,
            "fallbacks": 0,
            "stale_served": 0,
        }
    },
}


def test_stats_schema_version_1_is_read_back_as_1(tmp_path: Path) -> None:
    """A version 1 dump validates and stays 1 (stats --json of it too); 3 is refused."""
    old = CacheStats.model_validate_json(json.dumps(STATS_V1))
    assert old.schema_version == 1
    assert old.warm == WarmStats()
    assert old.models["gte-rerank-v2"].warm == WarmStats()
    assert stats_json(old)["schema_version"] == 1
    current = read_stats(tmp_path / "empty")
    assert current.schema_version == STATS_SCHEMA_VERSION == 2
    assert CacheStats.model_validate_json(current.model_dump_json()) == current
    with pytest.raises(ValidationError, match="schema_version"):
        CacheStats.model_validate({**STATS_V1, "schema_version": 3})


def test_stats_is_read_only(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stats changes nothing: no diskcache setting, no row, no file."""
    log = write_log(tmp_path / "log.jsonl", log_lines(3))
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    db = env / "cache.db"
    con = sqlite3.connect(db)
    settings = con.execute("SELECT key, value FROM Settings ORDER BY key").fetchall()
    con.close()
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in env.iterdir()}
    assert main(["--cache-dir", str(env), "stats", "--json"]) == 0
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in env.iterdir()}
    assert after == before
    con = sqlite3.connect(db)
    assert con.execute("SELECT key, value FROM Settings ORDER BY key").fetchall() == settings
    con.close()


def test_stats_while_another_process_writes(env: Path, tmp_path: Path) -> None:
    """stats answers while another process holds the write lock."""
    ScoreCache(env).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sqlite3, sys
            con = sqlite3.connect({str(env / "cache.db")!r}, timeout=5)
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO Settings (key, value) VALUES ('x-writer', 1)")
            print("locked", flush=True)
            sys.stdin.readline()
            con.rollback()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        proc = run_cli("--cache-dir", str(env), "stats", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["entries"] == 0
    finally:
        holder.communicate("done\n", timeout=30)


def test_clear_model_removes_only_that_model(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """clear --model removes that model's entries and no others."""
    log = write_log(tmp_path / "log.jsonl", log_lines(4) + log_lines(2, model="qwen3-rerank"))
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    capsys.readouterr()
    assert main(["--cache-dir", str(env), "clear", "--model", "qwen3-rerank", "--yes"]) == 0
    assert "deleted 16 scores of model qwen3-rerank" in capsys.readouterr().out
    with ScoreCache(env) as cache:
        stats = cache.stats()
    assert stats.entries == 32
    assert stats.models["qwen3-rerank"].entries == 0


def test_clear_asks_for_confirmation(env: Path, tmp_path: Path) -> None:
    """Without --yes, clear asks; a non-interactive stdin is refused with a clear line."""
    log = write_log(tmp_path / "log.jsonl", log_lines(2))
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    proc = run_cli("--cache-dir", str(env), "clear", stdin="")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "rerank-cache: error: refusing to clear without confirmation: pass --yes"
    )
    with ScoreCache(env) as cache:
        assert cache.stats().entries == 16


def test_clear_expired_only(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """clear --expired deletes expired scores and keeps live ones."""
    from freezegun import freeze_time

    from rerank_cache import score_key

    with freeze_time("2026-01-01") as clock:
        with ScoreCache(env, ttl=60) as short, ScoreCache(env, ttl=None) as forever:
            short.put_many(
                {score_key("m", None, "q", f"old {i}"): 0.5 for i in range(3)}, model="m"
            )
            forever.put_many(
                {score_key("m", None, "q", f"kept {i}"): 0.5 for i in range(2)}, model="m"
            )
        clock.tick(120)
        assert main(["--cache-dir", str(env), "clear", "--expired", "--yes"]) == 0
        assert "deleted 3 expired scores" in capsys.readouterr().out
        with ScoreCache(env) as cache:
            stats = cache.stats()
    assert (stats.entries, stats.expired_entries) == (2, 0)


def test_check_reports_and_fixes_tampered_rows(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check finds unsafe rows (exit 1) and check --fix removes them (exit 0)."""
    ScoreCache(env).close()
    con = sqlite3.connect(env / "cache.db")
    with con:
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, mode, filename, value) "
            "VALUES ('2:m:' || hex(randomblob(16)), 1, 0, 4, NULL, x'8004')"
        )
    con.close()
    assert main(["--cache-dir", str(env), "check"]) == 1
    assert "1 unsafe row(s)" in capsys.readouterr().out
    assert main(["--cache-dir", str(env), "check", "--fix"]) == 0
    assert "removed 1 unsafe row(s)" in capsys.readouterr().out
    assert main(["--cache-dir", str(env), "check"]) == 0


def test_check_on_corrupt_file(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged cache file: check fails with the recovery hint; check --fix moves it aside."""
    ScoreCache(env).close()
    (env / "cache.db").write_bytes(b"garbage" * 1000)
    for extra in ("cache.db-wal", "cache.db-shm"):
        (env / extra).unlink(missing_ok=True)
    assert main(["--cache-dir", str(env), "check"]) == 1
    assert "check --fix" in capsys.readouterr().err
    assert main(["--cache-dir", str(env), "check", "--fix"]) == 0
    assert list(env.glob("cache.db.corrupt-*"))
    assert main(["--cache-dir", str(env), "check"]) == 0


def test_path_prints_directory(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """path prints the directory in use: --cache-dir, else RERANK_CACHE_DIR."""
    assert main(["--cache-dir", str(env), "path"]) == 0
    assert capsys.readouterr().out.strip() == str(env)
    monkeypatch.setenv("RERANK_CACHE_DIR", str(tmp_path / "from-env"))
    assert main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "from-env")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["warm", "missing.jsonl"], "no such file: missing.jsonl"),
        (["warm", "."], "is a directory"),
    ],
)
def test_user_mistakes_give_one_line(env: Path, args: list[str], message: str) -> None:
    """Missing or wrong input files give one clear line, exit 1, no traceback."""
    proc = run_cli("--cache-dir", str(env), *args)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_api_key(tmp_path: Path) -> None:
    """warm without a key says how to set one; --dry-run needs none."""
    log = write_log(tmp_path / "log.jsonl", log_lines(1))
    environ = {k: v for k, v in os.environ.items() if k != "DASHSCOPE_API_KEY"}
    proc = run_python(
        "-m",
        "rerank_cache",
        "--cache-dir",
        str(tmp_path / "c"),
        "warm",
        str(log),
        env=environ,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "DASHSCOPE_API_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unsafe_cache_dir_is_one_line(tmp_path: Path) -> None:
    """A cache directory others can write is refused in one line with the fix."""
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    proc = run_cli("--cache-dir", str(d), "stats")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "chmod 700" in proc.stderr


def test_usage_errors_exit_2() -> None:
    """Unknown commands and bad option values are usage errors (exit 2)."""
    assert run_cli("bogus").returncode == 2
    assert run_cli("warm", "-", "--concurrency", "0").returncode == 2
    assert run_cli().returncode == 2


def test_warm_from_stdin_subprocess_never_leaks_key(
    env: Path, server: DashScopeServer, tmp_path: Path
) -> None:
    """`warm -` reads stdin; with a refused key the error is clear and key-free."""
    with DashScopeServer(api_keys=["sk-other"]) as strict:
        proc = run_cli(
            "--cache-dir",
            str(env),
            "warm",
            "-",
            stdin="\n".join(log_lines(2)) + "\n",
            env_extra={"DASHSCOPE_HTTP_BASE_URL": strict.base_url},
        )
    assert proc.returncode == 1
    assert "InvalidApiKey" in proc.stderr
    assert API_KEY not in proc.stderr + proc.stdout
    proc = run_cli("--cache-dir", str(env), "warm", "-", stdin="\n".join(log_lines(2)) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert "scored                  16" in proc.stdout
    assert server.stats.documents == 16


def test_object_documents_use_field(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Object documents take their text from --field; ids are allowed."""
    log = tmp_path / "log.jsonl"
    log.write_text(
        json.dumps(
            {
                "query": "q",
                "documents": [
                    {"id": "a", "body": "vector cache"},
                    {"id": "b", "body": "garden"},
                    {"id": "c"},
                    "plain text",
                ],
            }
        )
        + "\n"
    )
    assert main(["--cache-dir", str(env), "warm", str(log), "--field", "body", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["scored"], summary["documents_without_text"]) == (3, 1)
    (req,) = server.requests_log
    assert sorted(req.documents) == ["garden", "plain text", "vector cache"]


def test_max_rpm_spaces_requests(env: Path, tmp_path: Path, server: DashScopeServer) -> None:
    """--max-rpm is accepted and the run completes within it (spacing is unit-tested)."""
    log = write_log(tmp_path / "log.jsonl", log_lines(2))
    assert main(["--cache-dir", str(env), "warm", str(log), "--max-rpm", "6000"]) == 0
    assert server.stats.requests == 2


def test_warm_cache_script_matches_the_cli(
    env: Path, tmp_path: Path, server: DashScopeServer
) -> None:
    """scripts/warm_cache.py warms like `rerank-cache warm`, options in any order."""
    log = write_log(tmp_path / "log.jsonl", log_lines(5))
    script = ROOT / "scripts" / "warm_cache.py"
    proc = run_python(str(script), str(log), "--cache-dir", str(env), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scored"] == 40
    proc = run_python(str(script), f"--cache-dir={env}", str(log))
    assert proc.returncode == 0, proc.stderr
    assert "already cached          40" in proc.stdout
    assert server.stats.documents == 40
    bad = run_python(str(script), "--cache-dir", str(env), "missing.jsonl")
    assert bad.returncode == 1
    assert "no such file" in bad.stderr


# -- the progress display (issue 14, item 5) ------------------------------------------------


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as stderr is for a person at a shell."""

    def isatty(self) -> bool:
        return True


def without_ansi(text: str) -> str:
    """What a terminal shows, less colours and cursor moves (the frames stay, one per line)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def warmed(line: int, *, pairs: int = 1, requests: int = 1) -> LineWarmed:
    return LineWarmed(line, pairs=pairs, cached=0, scored=pairs, requests=requests, tokens=3)


def test_plain_progress_is_one_line_every_ten_seconds() -> None:
    """Without a terminal, progress is one plain line per ~10 s, with share read and ETA."""
    stream = io.StringIO()
    data = [b"x" * 99 + b"\n"] * 4
    with freeze_time("2026-01-01") as clock:
        progress = WarmProgress(stream, total_bytes=400)
        lines = progress.reader(data)
        next(lines)
        progress.update(warmed(1))
        clock.tick(6)
        next(lines)
        progress.update(warmed(2, pairs=3, requests=2))
        assert stream.getvalue() == ""
        clock.tick(5)
        next(lines)
        progress.update(warmed(3))
        clock.tick(1)
        next(lines)
        progress.update(warmed(4))
        progress.finish(complete=True)
    assert stream.getvalue().splitlines() == [
        "rerank-cache: warming: 75% of 400 B read · 3 lines · 5 pairs · 0 cached · 5 scored "
        "· 4 requests · 0 pairs/s · ETA 0:04"
    ]


def test_progress_counts_in_the_singular() -> None:
    """One line, one pair, one request: no "1 requests"."""
    progress = WarmProgress(io.StringIO())
    progress.update(warmed(1))
    assert progress.counts().startswith("1 line · 1 pair · 0 cached · 1 scored · 1 request · ")


def test_terminal_bar_ends_on_the_final_count(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal, the bar's last frame shows every line (not a stale count) at 100%."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(30)) + "\n")
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    shown = without_ansi(screen.getvalue())
    assert shown.endswith("\n")
    bar, counts = shown.rstrip("\n").split("\n")[-2:]
    assert counts == "30 lines · 240 pairs · 0 cached · 240 scored · 30 requests"
    assert "100%" in bar.rsplit("\r", 1)[-1]
    assert "lines read              30" in capsys.readouterr().out


class _InterruptingInput(io.RawIOBase):
    """Standard input that gives some lines, then the user presses Ctrl-C."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.data:
            raise KeyboardInterrupt
        n = min(len(buffer), len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def test_interrupt_message_gets_its_own_line(
    env: Path, monkeypatch: pytest.MonkeyPatch, server: DashScopeServer
) -> None:
    """Ctrl-C under a spinner (stdin: size unknown): the message starts a line; exit 130."""
    data = ("\n".join(log_lines(3)) + "\n").encode()
    stdin = io.TextIOWrapper(io.BufferedReader(_InterruptingInput(data)), encoding="utf-8")
    screen = Terminal()
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stderr", screen)
    assert main(["--cache-dir", str(env), "warm", "-"]) == 130
    shown = without_ansi(screen.getvalue())
    assert "%" not in shown  # no bar without a known size
    assert shown.endswith(
        "\nrerank-cache: error: interrupted; everything finished before the interruption is kept\n"
    )
    # Every document DashScope was sent is kept; how many lines started before the Ctrl-C
    # depends on scheduling (a queued line is not started after an interrupt).
    with ScoreCache(env) as cache:
        assert cache.stats().entries == server.stats.documents


# -- rough edges (issue 14, item 6) ---------------------------------------------------------


@pytest.mark.parametrize("args", [["stats"], ["stats", "--json"], ["path"]])
def test_closed_pipe_exits_quietly(env: Path, args: list[str]) -> None:
    """`stats | head -2` whose reader is gone: no "Broken pipe" error, exit 0."""
    ScoreCache(env).close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE every time
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rerank_cache", "--cache-dir", str(env), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_global_options_after_the_subcommand(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cache-dir works after the subcommand too; both store options at once are a usage error."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(2)) + "\n")
    assert main(["warm", str(log), "--cache-dir", str(env)]) == 0
    capsys.readouterr()
    assert main(["stats", "--json", "--cache-dir", str(env)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["directory"], data["entries"]) == (str(env), 16)
    assert main(["path", f"--cache-dir={env}"]) == 0
    assert capsys.readouterr().out.strip() == str(env)
    assert main(["--cache-dir", str(env), "stats", "--cache-url", "redis://localhost/0"]) == 2
    assert "not allowed with argument --cache-dir" in capsys.readouterr().err


def test_warm_cache_script_help_names_itself() -> None:
    """scripts/warm_cache.py --help names the script and lists the store options."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "warm_cache.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: warm_cache.py [-h] [--cache-dir DIR | --cache-url URL]")
    assert "rerank-cache warm" not in proc.stdout.split("\n\n")[0]


def test_no_pair_in_the_log_fails_naming_the_fields(
    env: Path, tmp_path: Path, server: DashScopeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--field content on documents without it: exit 1, naming the fields there are."""
    log = tmp_path / "log.jsonl"
    doc = {"id": "a", "body": "vector cache", "title": "t"}
    log.write_text(json.dumps({"query": "q", "documents": [doc, doc]}) + "\n")
    assert main(["--cache-dir", str(env), "warm", str(log), "--field", "content"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"rerank-cache: error: no (query, document) pair in {log}: no document has text in "
        "field 'content'; the documents' fields are body, id, title. Pass --field NAME."
    )
    assert server.stats.requests == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["--cache-dir", str(env), "warm", str(empty), "--dry-run"]) == 1
    assert f"no (query, document) pair in {empty}: it is empty" in capsys.readouterr().err


def test_dry_run_changes_nothing_and_labels_repeats(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run creates no directory; pairs repeated in the log are not "already cached"."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(2) * 3) + "\n")  # every line three times
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["--cache-dir", str(env), "warm", str(log), "--dry-run"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not env.exists()
    out = capsys.readouterr().out
    assert "already cached          0\n" in out
    assert "repeated in the input   32\n" in out
    assert "pairs to send           16\n" in out


def test_dry_run_on_an_existing_cache_counts_cached_pairs(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against a warmed cache, the dry run finds the pairs there and sends nothing."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(2)) + "\n")
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    log.write_text("\n".join(log_lines(3)) + "\n")
    capsys.readouterr()
    assert main(["--cache-dir", str(env), "warm", str(log), "--dry-run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["already_cached"], summary["repeated_in_input"], summary["scored"]) == (
        16,
        0,
        8,
    )


def test_dry_run_flags_an_unknown_model(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown model has no price: the estimate says so instead of "0.0000 CNY"."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(1) + log_lines(1, model="gte-rerank-v9")) + "\n")
    assert main(["--cache-dir", str(env), "warm", str(log), "--dry-run"]) == 0
    captured = capsys.readouterr()
    cost = next(line for line in captured.out.splitlines() if "estimated cost" in line)
    assert cost.endswith("CNY + unknown (gte-rerank-v9: no list price)")
    assert "rerank-cache: warning: unknown model gte-rerank-v9: no list price" in captured.err


def test_clear_unknown_model_lists_the_models(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """clear --model with a typo says which models the cache holds."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(1) + log_lines(1, model="qwen3-rerank")) + "\n")
    assert main(["--cache-dir", str(env), "warm", str(log)]) == 0
    capsys.readouterr()
    assert main(["--cache-dir", str(env), "clear", "--model", "qwen3-rernak", "--yes"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"nothing to clear: no scores of model qwen3-rernak in {env}; "
        "models with scores: gte-rerank-v2, qwen3-rerank"
    )
    with ScoreCache(env) as cache:
        assert cache.stats().entries == 16


def test_sigterm_during_warm_is_like_ctrl_c(
    env: Path, tmp_path: Path, server: DashScopeServer
) -> None:
    """SIGTERM mid-run: the request in flight finishes and is kept, a message, exit 143."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(3)) + "\n")
    server.delay_next(1.0, match="doc 2-0")  # the third line's request
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerank_cache", "--cache-dir", str(env), "warm", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DASHSCOPE_API_KEY": API_KEY},
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while server.stats.requests < 3:  # wait for the third request to be in flight
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert out == ""
    assert err == (
        "rerank-cache: error: terminated (SIGTERM); everything finished before it is kept\n"
    )
    with ScoreCache(env) as cache:
        assert cache.stats().entries == server.stats.documents == 24


def test_retry_warnings_once_per_wave_with_the_prefix(
    env: Path, tmp_path: Path, server: DashScopeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Four requests throttled together give one retry warning, prefixed rerank-cache:."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(4)) + "\n")
    for i in range(4):  # each line's request fails once, whatever order they arrive in
        server.fail_next(429, retry_after=0, match=f"doc {i}-0")
    with caplog.at_level(logging.WARNING, logger="rerank_cache"):
        assert main(["--cache-dir", str(env), "warm", str(log), "--concurrency", "4"]) == 0
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1
    assert retries[0].startswith("rerank-cache: DashScope request failed (DashScope returned")
    assert retries[0].endswith("(attempt 2 of 4)")
    assert server.stats.errors_by_status == {429: 4}


def test_empty_cache_hit_rate_is_a_dash(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing looked up yet: the hit rate is "—", not an alarming 0.0%."""
    ScoreCache(env).close()
    assert main(["--cache-dir", str(env), "stats"]) == 0
    assert "  hit rate                  \u2014\n" in capsys.readouterr().out


@contextlib.contextmanager
def unwritable(path: Path, how: str) -> Iterator[None]:
    """Make ``path`` unwritable the way ``how`` says, and writable again afterwards."""
    if how == "immutable":
        if shutil.which("chattr") is None:
            pytest.skip("no chattr")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i refused here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes regardless of permissions")
        path.chmod(0o500)
        try:
            yield
        finally:
            path.chmod(0o700)


@pytest.mark.parametrize(
    ("how", "why", "fix"),
    [("immutable", "is immutable", "chattr -i"), ("permission", "permission denied", "chmod 700")],
)
def test_unwritable_cache_dir_says_why(
    env: Path, tmp_path: Path, how: str, why: str, fix: str
) -> None:
    """An unwritable cache: stats and warm fail in one line saying why and what to do."""
    ScoreCache(env).close()
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(log_lines(1)) + "\n")
    with unwritable(env, how):
        for args in (["stats"], ["stats", "--json"], ["warm", str(log)], ["clear", "--yes"]):
            proc = run_cli("--cache-dir", str(env), *args, env_extra={"DASHSCOPE_API_KEY": "k"})
            assert (proc.returncode, proc.stdout) == (1, ""), args
            assert proc.stderr.count("\n") == 1
            assert proc.stderr.startswith(f"rerank-cache: error: the cache directory {env} ")
            assert why in proc.stderr
            assert fix in proc.stderr
