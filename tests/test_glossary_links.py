"""Every ``glossary.md#term`` link in the course lands on a heading of docs/glossary.md, and the site lists both pages."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"glossary\.md#([^)\s\"'>]+)")


def github_anchor(heading: str) -> str:
    """GitHub's rule: lower case, punctuation dropped (hyphens and underscores kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def glossary_anchors() -> set[str]:
    text = (ROOT / "docs" / "glossary.md").read_text(encoding="utf-8")
    return {github_anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")}


def broken_links(text: str, anchors: set[str]) -> list[str]:
    return [a for a in LINK.findall(text) if a not in anchors]


def course_texts() -> dict[str, str]:
    texts = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts[path.name] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for path in sorted((ROOT / "docs").glob("*.md")):
        texts[path.name] = path.read_text(encoding="utf-8")
    return texts


def test_anchor_rule_and_the_checker_catch_a_wrong_link():
    assert github_anchor("E2E latency") == "e2e-latency" and github_anchor("cu_seqlens") == "cu_seqlens"
    assert github_anchor("Decode-first scheduling") == "decode-first-scheduling"
    anchors = glossary_anchors()
    assert {"ttft", "tpot", "block-table", "kv-cache", "cu_seqlens"} <= anchors
    assert broken_links("[TTFT](../docs/glossary.md#ttft) and [x](../docs/glossary.md#time-to-first)", anchors) == [
        "time-to-first"
    ]


def test_every_glossary_link_in_the_course_resolves():
    anchors = glossary_anchors()
    texts = course_texts()
    assert sum(len(LINK.findall(t)) for t in texts.values()) > 20  # the course does link its glossary
    broken = {name: bad for name, text in texts.items() if (bad := broken_links(text, anchors))}
    assert broken == {}


def test_the_site_lists_the_glossary_and_reading_pages(tmp_path):
    pytest.importorskip("mistune")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_site
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    (tmp_path / "index.html").write_text(build_site.index_page([]), encoding="utf-8")
    (tmp_path / "01_page.html").write_text('<a href="../docs/glossary.md#ttft">TTFT</a>', encoding="utf-8")
    build_site.publish_docs(tmp_path)
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert 'href="glossary.html"' in index and 'href="reading.html"' in index
    assert (tmp_path / "01_page.html").read_text(encoding="utf-8") == '<a href="glossary.html#ttft">TTFT</a>'
    page = (tmp_path / "glossary.html").read_text(encoding="utf-8")
    assert {a for a in glossary_anchors() if f'id="{a}"' not in page} == set()
