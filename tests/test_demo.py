"""The terminal demo runs and prints a table whose rows add up."""

from __future__ import annotations

import re
import subprocess
import sys


def test_terminal_demo_prints_a_consistent_table():
    out = subprocess.run(
        [sys.executable, "-m", "cblab_teach", "demo", "--budget", "10", "--chunk", "4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = re.findall(r"^\s*(\d+) \| ([DP.]+) \|\s+(\d+)/(\d+)", out, flags=re.M)
    assert len(rows) > 3
    for _, bar, used, budget in rows:
        assert len(bar) == int(budget) == 10
        assert bar.count("D") + bar.count("P") == int(used)
        assert bar.rstrip(".").find("P") == -1 or "D" not in bar[bar.find("P") :]  # decode before prefill
    assert "request 5:" in out
