"""Links to the exercises read and look like links: "exercise 04: ...", "solution 04", never code text.

A link written as ``[`ex01_ragged_mask`](../exercises/...)`` renders as black code text in
JupyterLab and on the site, and its solution link had the same text: two identical-looking
names, neither looking clickable.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if re.match(r"\d\d_", p.name))
LINK = re.compile(r"\[([^\]]*)\]\(\.\./(exercises|solutions)/(\w+)\.ipynb\)")
WORD = {"exercises": "exercise", "solutions": "solution"}


def link_problems(markdown: str) -> list[str]:
    """What is wrong with each exercise or solution link in ``markdown``."""
    problems, texts = [], {}
    for text, folder, name in LINK.findall(markdown):
        if "`" in text:
            problems.append(f"[{text}] to {folder}/{name} is code text, not a link's words")
        if WORD[folder] not in text.lower():
            problems.append(f"[{text}] to {folder}/{name} does not say '{WORD[folder]}'")
        texts.setdefault(name, {})[folder] = text
    for name, by_folder in texts.items():
        if len(by_folder) == 2 and len(set(by_folder.values())) == 1:
            problems.append(f"{name}: the exercise and its solution links read the same")
    return problems


def test_the_checker_catches_code_text_and_twin_links() -> None:
    old = (
        "Build it: [`ex01_ragged_mask`](../exercises/ex01_ragged_mask.ipynb). Stuck? The worked version is in "
        "[`ex01_ragged_mask`](../solutions/ex01_ragged_mask.ipynb)."
    )
    found = link_problems(old)
    assert len(found) == 5, found  # code text twice, no word twice, the twins
    assert link_problems("[solution 01](../exercises/ex01_ragged_mask.ipynb)")  # the wrong word
    good = "[exercise 01: the ragged causal mask](../exercises/ex01_ragged_mask.ipynb), [solution 01](../solutions/ex01_ragged_mask.ipynb)"
    assert link_problems(good) == []


@pytest.mark.parametrize("path", COURSE, ids=[p.stem[:2] for p in COURSE])
def test_exercise_links_read_like_links(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert link_problems(markdown) == []
