"""The benchmark script runs from a checkout and its traffic measurement holds to the floor.

Only counts are asserted here (documents sent next to the floor); timings never are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"


@pytest.mark.slow
def test_quick_traffic_prints_table_and_sends_exactly_the_floor(tmp_path: Path) -> None:
    """`bench.py --quick --only traffic` prints the table; this project sends only unique pairs."""
    report = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "traffic", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| measurement | | target | measured | met? |" in proc.stdout
    [project_line] = [line for line in proc.stdout.splitlines() if "sent by this project" in line]
    assert project_line.startswith("| 2 API traffic |")
    assert project_line.rstrip().endswith("| yes |")

    rows = json.loads(report.read_text())["rows"]
    [workload] = [r for r in rows if r["name"].startswith("workload:")]
    [project] = [r for r in rows if r["name"].startswith("sent by this project")]
    assert workload["data"]["queries"] >= 200
    assert project["data"]["documents"] == workload["data"]["floor_documents"]
    assert project["data"]["tokens"] == workload["data"]["floor_tokens"]
    assert project["met"] is True
