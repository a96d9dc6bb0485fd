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


def test_real_model_demo_prints_the_table_and_the_answers():
    from cblab_teach.demo import run_real_demo

    out = run_real_demo(num_requests=2, budget=64, chunk=32, max_new_tokens=8)
    rows = re.findall(r"^\s*(\d+) \| ([DP.]+) \|\s+(\d+)/(\d+)", out, flags=re.M)
    assert rows and all(bar.count("D") + bar.count("P") == int(used) for _, bar, used, _ in rows)
    assert re.search(r"request 0 \[(stop|length)\]: What is the capital of France\? -> '.+'", out), out
