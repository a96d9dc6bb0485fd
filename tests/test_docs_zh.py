"""The Chinese glossary, reading list and teaching notes: the English glossary's anchors, links that land, Chinese prose.

Notebooks link to ``glossary_zh.md#continuous-batching`` with the English anchor, so each Chinese heading carries an
explicit ``<a id="...">`` anchor (GitHub would otherwise slug the Chinese heading text). Anchors are resolved the way
``test_glossary_links`` resolves them (GitHub's heading rule), plus explicit ids.

"Mostly Chinese" is measured per block of prose (paragraph, list item, table row), with code, link targets and HTML
left out: a block's Chinese share is its CJK characters over CJK characters plus Latin words. English terms in
parentheses and paper titles keep a block well above one half; an untranslated English paragraph has a share of 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .test_glossary_links import github_anchor, glossary_anchors

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ZH_DOCS = ("glossary_zh.md", "reading_zh.md", "teaching_zh.md")

EXPLICIT_ID = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")
HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN_WORD = re.compile(r"[A-Za-z]+")

MIN_SHARE = 0.5  # a block of prose is Chinese if at least half of its units are CJK characters
MIN_WORDS = 8  # shorter blocks ("English version: [glossary.md](glossary.md)") are too short to judge
MIN_DOC_SHARE = 0.6  # and the document as a whole


def anchors_of(text: str) -> set[str]:
    """Every anchor a link into this Markdown can use: GitHub heading slugs (tags stripped) and explicit ids."""
    text = FENCE.sub("", text)
    slugs = {github_anchor(re.sub(r"<[^>]+>", "", h)) for h in HEADING.findall(text)}
    return slugs | set(EXPLICIT_ID.findall(text))


def broken_relative_links(doc: Path, text: str | None = None) -> list[str]:
    """Relative links of a doc whose file is missing, or whose #anchor is not in the target Markdown."""
    text = FENCE.sub("", doc.read_text(encoding="utf-8") if text is None else text)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: — not a file of this repository
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.is_file():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors_of(file.read_text(encoding="utf-8")):
            broken.append(target)
    return broken


def prose_blocks(text: str) -> list[str]:
    """Paragraphs, list items and table rows, with code, link targets, autolinks and HTML tags removed."""
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<https?://[^>]+>", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    blocks, current = [], []
    for line in text.splitlines():
        starts_item = re.match(r"\s*(?:[*-]|\d+\.)\s", line) or line.lstrip().startswith("|")
        if not line.strip() or starts_item:
            if current:
                blocks.append(" ".join(current))
            current = [line.strip()] if line.strip() else []
            if line.lstrip().startswith("|"):  # a table row is a block of its own
                blocks.append(line.strip())
                current = []
        else:
            current.append(line.strip())
    if current:
        blocks.append(" ".join(current))
    return blocks


def chinese_share(text: str) -> float:
    """CJK characters / (CJK characters + Latin words); 1.0 for text with neither."""
    cjk, words = len(CJK.findall(text)), len(LATIN_WORD.findall(text))
    return cjk / (cjk + words) if cjk + words else 1.0


def english_blocks(text: str) -> list[str]:
    """The blocks of at least MIN_WORDS Latin words that are not mostly Chinese."""
    return [b for b in prose_blocks(text) if len(LATIN_WORD.findall(b)) >= MIN_WORDS and chinese_share(b) < MIN_SHARE]


def mostly_chinese(text: str) -> bool:
    return not english_blocks(text) and chinese_share(" ".join(prose_blocks(text))) >= MIN_DOC_SHARE


def english_glossary_order() -> list[str]:
    text = (DOCS / "glossary.md").read_text(encoding="utf-8")
    return [github_anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")]


def test_every_english_glossary_anchor_is_in_the_chinese_glossary_in_the_same_order():
    zh = (DOCS / "glossary_zh.md").read_text(encoding="utf-8")
    english = english_glossary_order()
    assert set(english) == glossary_anchors() and len(english) > 40
    assert set(english) - anchors_of(zh) == set()
    # one explicit anchor per entry heading, in the English order: the same entries, same sequence
    heading_ids = [EXPLICIT_ID.findall(line) for line in zh.splitlines() if line.startswith("## ")]
    assert all(len(ids) == 1 for ids in heading_ids)
    assert [ids[0] for ids in heading_ids] == english


def test_anchor_resolution_follows_headings_and_explicit_ids():
    text = '## <a id="prefill"></a>预填充（Prefill）\n\n## Measured run times\n\n```\n## not a heading\n```\n'
    anchors = anchors_of(text)
    assert {"prefill", "measured-run-times", github_anchor("预填充（Prefill）")} <= anchors
    assert "not-a-heading" not in anchors
    assert github_anchor("预填充（Prefill）") == "预填充prefill"  # why the explicit anchors are needed


@pytest.mark.parametrize("name", ZH_DOCS)
def test_every_relative_link_in_the_chinese_docs_resolves(name):
    doc = DOCS / name
    text = doc.read_text(encoding="utf-8")
    assert len(LINK.findall(text)) >= 2  # each links at least its English version and another page of the course
    assert broken_relative_links(doc) == []


def test_the_link_checker_catches_a_missing_file_and_a_missing_anchor():
    doc = DOCS / "glossary_zh.md"
    text = (
        "[好](reading_zh.md) [好](#prefill) [好](teaching.md#measured-run-times) [外部](https://example.org/x)\n"
        "[缺文件](../notebooks/zh/99_none.ipynb) [缺锚点](glossary_zh.md#time-to-first) [缺](#nope)\n"
    )
    assert broken_relative_links(doc, text) == [
        "../notebooks/zh/99_none.ipynb",
        "glossary_zh.md#time-to-first",
        "#nope",
    ]


def test_the_english_docs_link_their_chinese_versions_at_the_top():
    for name in ZH_DOCS:
        english = DOCS / name.replace("_zh", "")
        head = english.read_text(encoding="utf-8").splitlines()[:4]
        assert any(f"]({name})" in line for line in head), english.name


@pytest.mark.parametrize("name", ZH_DOCS)
def test_each_chinese_doc_is_mostly_chinese(name):
    text = (DOCS / name).read_text(encoding="utf-8")
    assert english_blocks(text) == []
    assert mostly_chinese(text)


def test_the_measure_rejects_an_english_paragraph():
    english = (DOCS / "teaching.md").read_text(encoding="utf-8")
    paragraph = next(b for b in prose_blocks(english) if len(LATIN_WORD.findall(b)) > 30)
    assert chinese_share(paragraph) == 0.0
    assert not mostly_chinese(paragraph)
    # one untranslated paragraph in an otherwise Chinese document is caught, not averaged away
    zh = (DOCS / "teaching_zh.md").read_text(encoding="utf-8")
    assert mostly_chinese(zh) and not mostly_chinese(zh + "\n\n" + paragraph + "\n")
    assert english_blocks(zh + "\n\n" + paragraph + "\n") == [paragraph]
    # and the English originals fail as whole documents
    assert not any(mostly_chinese((DOCS / n.replace("_zh", "")).read_text(encoding="utf-8")) for n in ZH_DOCS)


def test_the_measure_accepts_chinese_with_english_terms_in_parentheses():
    block = "连续批处理（continuous batching）在每一步都重新组 batch：生成完的请求离开，新请求加入，见 notebook 02。"
    assert chinese_share(block) > 0.8 and mostly_chinese(block)


ZH_GLOSSARY_LINK = re.compile(r"glossary_zh\.md#([^)\s\"'>]+)")


def test_every_chinese_glossary_link_in_the_course_resolves():
    anchors = anchors_of((DOCS / "glossary_zh.md").read_text(encoding="utf-8"))
    sources = [
        *DOCS.glob("*.md"),
        *ROOT.glob("*/zh/**/*.md"),
        *ROOT.glob("*/zh/*.ipynb"),
        *ROOT.glob("notebooks/*.ipynb"),
    ]
    links = {path: ZH_GLOSSARY_LINK.findall(path.read_text(encoding="utf-8")) for path in sources}
    broken = {path.name: bad for path, found in links.items() if (bad := [a for a in found if a not in anchors])}
    assert broken == {}
    assert ZH_GLOSSARY_LINK.findall("[抢占](glossary_zh.md#preemption) [x](glossary_zh.md#pre-emption)") == [
        "preemption",
        "pre-emption",
    ]
    assert "pre-emption" not in anchors
