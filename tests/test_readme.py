"""The README's Python examples run as written (a learner copies them first)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run_in_order(capsys) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2, "the README shows the engine and the advanced settings"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # later blocks reuse the model of the first
    engine = namespace["engine"]
    assert not engine.has_unfinished() and engine.stats.prefix_hit_tokens >= 0
    assert all(len(engine.output(rid)) == 8 for rid in engine.requests)
