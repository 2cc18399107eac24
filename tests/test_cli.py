"""The rerank-cache command, in-process and as a subprocess, against the local server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rerank_cache import CachedReRanker, Doc, QwenReRanker, ScoreCache
from rerank_cache.cli import main
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
    assert data["schema_version"] == 1
    assert data["api_requests"] == srv.ok_requests
    assert data["documents_sent"] == srv.documents == 96
    assert data["tokens_billed"] == srv.tokens
    assert (data["entries"], data["hits"], data["misses"]) == (96, 96, 96)
    assert data["hit_rate"] == 0.5
    assert set(data["models"]) == {"gte-rerank-v2", "qwen3-rerank"}
    assert data["models"]["qwen3-rerank"]["entries"] == 24
    assert data["estimated_tokens_saved"] == srv.tokens  # every billed pair hit once
    assert main(["--cache-dir", str(env), "stats"]) == 0
    table = capsys.readouterr().out
    assert "hit rate                  50.0%" in table
    assert "qwen3-rerank" in table


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
            "VALUES ('1:m:' || hex(randomblob(16)), 1, 0, 4, NULL, x'8004')"
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
