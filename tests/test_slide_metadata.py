"""Slide metadata: the rules of scripts/slide_metadata.py, and the committed notebooks carrying what they give.

``test_committed_notebooks_carry_the_slide_metadata`` applies the rules to each
course notebook in memory and compares with the file: when a notebook changes,
``python scripts/slide_metadata.py`` brings its slide metadata back in line.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("slide_metadata", REPO / "scripts" / "slide_metadata.py")
slides = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slides)

md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell
LONG_HELPER = "\n".join(["def helper(x):"] + [f"    x = x + {i}" for i in range(20)] + ["    return x"])
LONG_RUN = "\n".join(f"print({i})" for i in range(20))
LONG_VIEW = LONG_HELPER + "\n\nfig = helper(1)\nfig"


def types_of(*cells: nbformat.NotebookNode) -> list[str]:
    return slides.slide_types(nbformat.v4.new_notebook(cells=list(cells)))


def test_a_lesson_becomes_a_deck() -> None:
    got = types_of(
        md("# 99 · A lesson\n\n**After this notebook you will be able to** ..."),
        code("import torch\nsetup_notebook()"),
        md("## The idea\n\nOne sentence."),
        md("## Live: one run\n\nShort intro."),
        code("budget_figure(records)"),
        md("The same run as one picture."),
        code("budget_overview(records)"),
        md("(An aside for the presenter.)"),
        code("mask_figure(records)"),
        md("**Check yourself.** The rules hold."),
        code("assert 1 + 1 == 2"),
        code(LONG_RUN),
        code(LONG_HELPER),
        code(LONG_VIEW),
        md("### Q1. A question?"),
        md("## Recap\n\n* one idea"),
        md("## Interview corner\n\n**Q:** why?"),
    )
    assert got == [
        "slide",  # title and objectives
        "skip",  # set-up cell
        "slide",  # the idea
        "slide",  # live demo heading ...
        "-",  # ... and its figure right under it
        "subslide",  # a caption starts the figure's own slide
        "-",  # the figure it captions
        "notes",  # an aside in parentheses
        "subslide",  # a figure after a figure gets its own slide
        "subslide",  # check yourself
        "-",  # its asserts
        "fragment",  # long code that prints: revealed on a key press
        "skip",  # long helper definitions
        "subslide",  # long code that ends in a view: its own slide
        "subslide",  # a ### question
        "slide",  # recap
        "slide",  # interview corner
    ]


def test_views_and_definitions_are_read_from_the_code() -> None:
    assert slides.ends_in_view("fig = make()\nfig")
    assert slides.ends_in_view("widgets.VBox([a, b])")
    assert not slides.ends_in_view("print('hello')")
    assert not slides.ends_in_view("fig = make()")
    assert not slides.ends_in_view("x = (")  # not Python: no view
    assert slides.only_defines("import os\nX = 1\ndef f():\n    return X")
    assert not slides.only_defines("def f():\n    return 1\nf()")


def test_setup_is_the_first_code_cell_or_tagged() -> None:
    tagged = code("import torch")
    tagged.metadata["tags"] = ["qa-setup"]
    assert types_of(md("# t"), code("x = 1"), md("## s"), tagged, code("y = 2")) == ["slide", "skip", "slide", "skip", "-"]


def test_apply_writes_every_cell_and_then_changes_nothing() -> None:
    nb = nbformat.v4.new_notebook(cells=[md("# t"), code("import torch"), md("## Recap")])
    assert slides.apply(nb) == 3
    assert slides.committed_types(nb) == ["slide", "skip", "slide"]
    assert slides.apply(nb) == 0 and slides.mismatches(nb) == []
    nb.cells[2].metadata["slideshow"]["slide_type"] = "fragment"
    assert slides.mismatches(nb) == ["cell 2: has 'fragment', the rules give 'slide'"]


def test_check_mode_exits_non_zero_on_a_stale_notebook(tmp_path: Path) -> None:
    path = tmp_path / "99_lesson.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[md("# t"), code("import torch")]), path)
    run = [sys.executable, str(REPO / "scripts" / "slide_metadata.py")]
    assert subprocess.run([*run, "--check", str(path)], capture_output=True).returncode == 1
    assert subprocess.run([*run, str(path)], capture_output=True).returncode == 0
    assert subprocess.run([*run, "--check", str(path)], capture_output=True).returncode == 0
    assert slides.committed_types(nbformat.read(path, as_version=4)) == ["slide", "skip"]


@pytest.mark.parametrize("path", slides.course_notebooks(), ids=lambda p: p.name)
def test_committed_notebooks_carry_the_slide_metadata(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    problems = slides.mismatches(nb)
    assert problems == [], f"{path.name}: run `python scripts/slide_metadata.py` ({problems[0]})"
    assert 5 <= slides.deck_length(slides.slide_types(nb)) <= 60, "a deck of sensible length"
