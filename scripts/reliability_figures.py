"""Count what the reliability tests put the library through, for docs/reliability.md's figures.

Runs the reliability, hardening, property and store suites in this process and counts, from
the run itself: Hypothesis examples tried per property test, faults the local DashScope
servers injected (by kind), processes SIGKILLed, and tests passed or failed. Nothing is
estimated: a figure not counted here does not go into the doc.

    PYTHONPATH=src python scripts/reliability_figures.py [extra pytest args]
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Generator
from datetime import date
from typing import Any

import pytest

from rerank_cache.testing.faults import Fault, FaultQueue

FILES = [
    "tests/test_reliability.py",
    "tests/test_hardening.py",
    "tests/test_store_hardening.py",
    "tests/test_planning.py",
    "tests/test_keys.py",
    "tests/test_reranker.py",
    "tests/test_async.py",
    "tests/test_cached.py",
    "tests/test_disk_store.py",
    "tests/test_store_contract.py",
]

_PASSING = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


class Counting:
    """A pytest plugin that counts examples, injected faults and SIGKILLs."""

    def __init__(self) -> None:
        self.examples: dict[str, int] = {}
        self.faults: Counter[str] = Counter()
        self.sigkills = 0
        self.outcomes: Counter[str] = Counter()

    def install(self) -> None:
        """Wrap the fault queue and the two ways the tests kill a process."""
        take = FaultQueue.take
        kill = os.kill
        popen_kill = subprocess.Popen.kill

        def counted_take(queue: FaultQueue, documents: tuple[str, ...]) -> Fault | None:
            fault = take(queue, documents)
            if fault is not None:
                self.faults[fault.kind] += 1
            return fault

        def counted_kill(pid: int, sig: int) -> None:
            if sig == signal.SIGKILL:
                self.sigkills += 1
            kill(pid, sig)

        def counted_popen_kill(proc: subprocess.Popen[Any]) -> None:
            self.sigkills += 1  # Popen.kill is SIGKILL on POSIX
            popen_kill(proc)

        FaultQueue.take = counted_take  # type: ignore[method-assign]
        os.kill = counted_kill
        subprocess.Popen.kill = counted_popen_kill  # type: ignore[method-assign]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        """Record each test's outcome and, for a property test, its examples."""
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcomes[report.outcome] += 1
        stats = getattr(item, "hypothesis_statistics", None)
        if report.when == "teardown" and stats:
            self.examples[item.nodeid] = sum(
                int(valid) + int(failing) for valid, failing, _ in _PASSING.findall(stats)
            )


def main() -> int:
    """Run the suites, print the counts as Markdown."""
    counting = Counting()
    counting.install()
    code = pytest.main(["-q", "-p", "no:cacheprovider", *FILES, *sys.argv[1:]], plugins=[counting])
    print(f"\n## Figures from a run on {date.today().isoformat()} (pytest exit {int(code)})\n")
    print("| Property test | Examples |\n|---|---|")
    for nodeid, n in sorted(counting.examples.items()):
        print(f"| `{nodeid}` | {n} |")
    print(f"| total | {sum(counting.examples.values())} |\n")
    print("| Count | Value |\n|---|---|")
    for kind, n in sorted(counting.faults.items()):
        print(f"| faults injected: {kind} | {n} |")
    print(f"| faults injected: total | {sum(counting.faults.values())} |")
    print(f"| processes SIGKILLed | {counting.sigkills} |")
    for outcome, n in sorted(counting.outcomes.items()):
        print(f"| tests {outcome} | {n} |")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
