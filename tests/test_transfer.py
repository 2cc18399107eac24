"""``rerank-cache export`` / ``import``: live scores move between stores (disk and Redis,
through the contract suite's ``kit``) keeping their remaining lifetime; bad files are
refused whole."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from rerank_cache import ScoreCache
from rerank_cache.cli import main
from rerank_cache.keys import score_key

from . import test_store_contract as contract
from .test_store_contract import Kit

kit = contract.kit  # the contract suite's store fixture: disk and Redis

QUERY_TEXT = "a query that must not be exported"


def fill(
    directory: Path, n: int, *, model: str = "gte-rerank-v2", ttl: float | None = 3600
) -> list[str]:
    keys = [score_key(model, None, QUERY_TEXT, f"secret document {i}") for i in range(n)]
    with ScoreCache(directory, ttl=ttl) as source:
        source.put_many({k: i / 7 for i, k in enumerate(keys)}, model=model)
    return keys


def lines_of(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_export_import_keeps_scores_and_remaining_lifetime(
    kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """disk -> file -> disk or Redis: same scores, same expiry, nothing else in the file."""
    source = tmp_path / "source"
    keys = fill(source, 30) + fill(source, 5, model="qwen3-rerank", ttl=None)
    dump = tmp_path / "scores.jsonl"
    assert main(["--cache-dir", str(source), "export", str(dump)]) == 0
    assert "exported 35 scores" in capsys.readouterr().err
    text = dump.read_text()
    assert "secret" not in text
    assert QUERY_TEXT not in text
    rows = lines_of(text)
    assert {tuple(sorted(r)) for r in rows} == {("expiry", "key", "model", "score")}
    by_key = {r["key"]: r for r in rows}
    assert set(by_key) == set(keys)
    assert by_key[keys[0]]["model"] == "gte-rerank-v2"
    assert by_key[keys[-1]]["expiry"] is None
    expiry = by_key[keys[0]]["expiry"]
    assert isinstance(expiry, float)
    assert 3500 < expiry - time.time() <= 3600

    assert main([*kit.cli_args(), "import", str(dump)]) == 0
    out = capsys.readouterr().out
    assert "imported 35 scores" in out
    assert "skipped 0 expired lines (of 35 lines)" in out
    with kit.make() as target:  # its own TTL is 30 days: the imported ones keep theirs
        assert target.get_many(keys) == {k: by_key[k]["score"] for k in keys}
        remaining = kit.remaining_ttl(keys[0])
        assert remaining is not None
        assert 3400 < remaining <= 3600
        assert kit.remaining_ttl(keys[-1]) is None
        stats = target.stats()
    assert stats.entries == 35
    assert stats.models["qwen3-rerank"].entries == 5
    # Importing again changes nothing (the entry counts included).
    assert main([*kit.cli_args(), "import", str(dump)]) == 0
    with kit.make() as target:
        assert target.stats().entries == 35


def test_export_from_either_store_by_model(
    kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with kit.make(ttl=600) as store:
        store.put_many(
            {score_key("gte-rerank-v2", None, "q", str(i)): 0.5 for i in range(3)},
            model="gte-rerank-v2",
        )
        store.put_many({score_key("qwen3-rerank", None, "q", "x"): 0.25}, model="qwen3-rerank")
    assert main([*kit.cli_args(), "export", "--model", "qwen3-rerank"]) == 0
    captured = capsys.readouterr()
    rows = lines_of(captured.out)
    assert [(r["model"], r["score"]) for r in rows] == [("qwen3-rerank", 0.25)]
    assert "exported 1 score of model qwen3-rerank" in captured.err
    assert main([*kit.cli_args(), "export", "-"]) == 0
    assert len(lines_of(capsys.readouterr().out)) == 4


def test_expired_lines_are_skipped_and_counted(
    kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, dead = (score_key("gte-rerank-v2", None, "q", t) for t in ("live", "dead"))
    now = time.time()
    dump = tmp_path / "d.jsonl"
    dump.write_text(
        json.dumps({"key": live, "model": "gte-rerank-v2", "score": 0.5, "expiry": now + 900})
        + "\n\n"
        + json.dumps({"key": dead, "model": "gte-rerank-v2", "score": 0.1, "expiry": now - 1})
        + "\n"
    )
    assert main([*kit.cli_args(), "import", str(dump)]) == 0
    out = capsys.readouterr().out
    assert "imported 1 score into" in out
    assert "skipped 1 expired line (of 2 lines)" in out
    with kit.make() as store:
        assert store.get_many([live, dead]) == {live: 0.5}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("not json", "not a JSON object"),
        ('{"key": "x", "model": "m", "score": 1, "expiry": null}', "not a rerank-cache key"),
        ('{GOOD_KEY, "model": "other", "score": 1, "expiry": null}', "does not match"),
        ('{GOOD_KEY, "model": "gte-rerank-v2", "score": NaN, "expiry": null}', "finite"),
        ('{GOOD_KEY, "model": "gte-rerank-v2", "score": true, "expiry": null}', "finite"),
        ('{GOOD_KEY, "model": "gte-rerank-v2", "score": 1, "expiry": "soon"}', "epoch"),
        ('{GOOD_KEY, "model": "gte-rerank-v2", "score": 1}', "exactly the fields"),
    ],
)
def test_an_invalid_file_is_refused_whole(
    kit: Kit,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bad: str,
    problem: str,
) -> None:
    """The bad line is named; the valid lines before it are not imported either (stdin too)."""
    good = [score_key("gte-rerank-v2", None, "q", str(i)) for i in range(1500)]
    lines = [
        json.dumps({"key": k, "model": "gte-rerank-v2", "score": 0.5, "expiry": None}) for k in good
    ]
    lines.append(bad.replace("{GOOD_KEY", "{" + json.dumps("key") + ": " + json.dumps(good[0])))
    dump = tmp_path / "bad.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    assert main([*kit.cli_args(), "import", str(dump)]) == 1
    err = capsys.readouterr().err
    assert f"{dump}:1501: " in err
    assert problem in err
    assert "nothing was imported" in err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(dump.read_bytes())))
    assert main([*kit.cli_args(), "import", "-"]) == 1
    assert "<stdin>:1501: " in capsys.readouterr().err
    with kit.make() as store:
        assert store.get_many(good) == {}
        assert store.stats().entries == 0


def test_import_from_stdin(
    kit: Kit, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = fill(tmp_path / "src", 3)
    assert main(["--cache-dir", str(tmp_path / "src"), "export"]) == 0
    exported = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(exported.encode())))
    assert main([*kit.cli_args(), "import", "-"]) == 0
    with kit.make() as store:
        assert len(store.get_many(keys)) == 3


def test_the_disk_store_exports_in_chunks(tmp_path: Path) -> None:
    """More rows than one chunk: every one once, in key order."""
    keys = fill(tmp_path / "big", 2500)
    with ScoreCache(tmp_path / "big") as store:
        exported = [key for key, _, _ in store.iter_live()]
        assert exported == sorted(keys)
        assert list(store.iter_live("qwen3-rerank")) == []


def test_export_of_a_missing_cache_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--cache-dir", str(tmp_path / "none"), "export"]) == 1
    assert "no cache at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
