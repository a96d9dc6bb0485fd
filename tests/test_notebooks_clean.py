"""Committed notebooks carry no outputs, and every course notebook has the course's shape.

Outputs in git make diffs unreadable and go stale; the course's promise (goals up
front, checks with asserts, a recap, interview questions, an exercise) is what
makes a notebook a lesson rather than a script.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p for d in ("notebooks", "solutions", "exercises") for p in (ROOT / d).glob("*.ipynb"))
COURSE = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if re.match(r"(0\d|1[0-7])_", p.name))
COURSE_NAMES = [
    "00_start_here",
    "01_prefill_decode_kv_cache",
    "02_static_vs_continuous",
    "03_token_budget_scheduler",
    "04_ragged_batching_mask",
    "05_dense_vs_paged_kv",
    "06_attention_numerics",
    "07_engine_proven_correct",
    "08_plugins",
    "09_monitoring_memory",
    "10_performance_tradeoffs",
    "11_priority_preemption",
    "12_prefix_caching",
    "13_speculative_decoding",
    "14_kv_sharding",
    "15_memory_and_step_time",
    "16_load_goodput_parallelism",
    "17_serving_over_http",
]


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_the_course_is_complete() -> None:
    assert [p.stem for p in COURSE] == COURSE_NAMES


@pytest.mark.parametrize("path", COMMITTED, ids=_ids(COMMITTED))
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; strip them before committing"


def _text(cells) -> str:
    return "\n".join(c.source for c in cells).lower()


@pytest.mark.parametrize("path", COURSE, ids=_ids(COURSE))
def test_course_notebook_shape(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    first = cells[0]
    assert first.cell_type == "markdown" and "you will be able to" in first.source.lower(), "learning goals first"
    first_code = next(c for c in cells if c.cell_type == "code")
    assert "setup_notebook()" in first_code.source, "the first code cell sets the renderer"
    assert "manual_seed" in first_code.source, "the notebook is seeded"
    markdown = [c for c in cells if c.cell_type == "markdown"]
    assert "check yourself" in _text(markdown)
    checks = [c for c in cells if c.cell_type == "code" and re.search(r"^\s*assert\b", c.source, re.M)]
    assert checks, "a check-yourself cell needs asserts"
    headings = [c.source.splitlines()[0].lower() for c in markdown if c.source]
    assert any(h.startswith("## recap") for h in headings)
    corner = [c for c in markdown if c.source.lower().startswith("## interview corner")]
    assert corner and "18_interview_review_en.ipynb" in corner[0].source
    assert re.search(r"\(\.\./exercises/ex\d\d_\w+\.ipynb\)", _text(markdown)), "link to an exercise"


@pytest.mark.parametrize("path", COURSE, ids=_ids(COURSE))
def test_exercise_links_resolve(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    links = re.findall(r"\(\.\./(exercises|solutions)/(ex\d\d_\w+\.ipynb)\)", _text(nb.cells))
    missing = [f"{d}/{n}" for d, n in links if not (ROOT / d / n).exists()]
    assert not missing, f"{path.name} links to missing notebooks: {missing}"


@pytest.mark.parametrize("path", COURSE, ids=_ids(COURSE))
def test_cells_meant_to_fail_are_tagged(path: Path) -> None:
    """nbval runs the course in CI: a cell that raises on purpose must say so."""
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code" and "raises-exception" in c.metadata.get("tags", []):
            assert c.source.strip(), "an empty cell tagged raises-exception"
