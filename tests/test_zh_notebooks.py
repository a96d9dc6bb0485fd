"""The Chinese course: one code, two languages of prose, kept in step by ``scripts/make_zh_notebooks.py``.

For every English notebook with a Chinese text file (``<folder>/zh/<stem>.md``):

* the built notebook ``<folder>/zh/<stem>.ipynb`` is what the script builds now (its ``--check``);
* its code cells are the English notebook's code cells, in order, byte for byte;
* every English markdown cell has a Chinese counterpart, in the same place;
* no Chinese markdown cell is mostly English (:func:`chinese_share`, below, says how that is decided);
* every relative link in it resolves, seen from ``<folder>/zh/`` (and a ``#anchor`` names a heading).

The script's error paths (a stale hash, a missing cell, an unknown id, ...) are tested on small synthetic
notebooks in ``tmp_path``; the course map ``notebooks/zh/README.md`` is checked the same way.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_zh_notebooks as mz  # noqa: E402

sys.path.remove(str(ROOT / "scripts"))

TRANSLATED = mz.translated()
IDS = [f"{p.parent.name}/{p.stem}" for p in TRANSLATED]

# --- how "mostly English" is decided ----------------------------------------------------------------------------
#
# Only prose counts. Fenced code, code spans, math ($...$, $$...$$, \(...\), \[...\]), HTML comments and tags,
# URLs and link targets are cut out first: they are the same in both languages. What is left is weighed in
# units of meaning: each Han character is one unit, and so is each English word, a letter followed by lower-case
# letters ("prefill", "Hugging", "the"). Acronyms, camel-case names and single letters (KV, TTFT, vLLM, SGLang,
# PyTorch, N) do not count: Chinese technical prose writes them in Latin letters too. A cell is mostly English
# when fewer than half of its units are Han characters. A Chinese sentence that keeps a few English terms in
# parentheses stays far above one half; an English paragraph with one Chinese word in it lands far below.

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
ENGLISH_WORD = re.compile(r"\b[A-Za-z][a-z]+\b")
NOT_PROSE = [
    re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1", re.S | re.M),  # fenced code
    re.compile(r"<!--.*?-->", re.S),  # HTML comments
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\\\[.*?\\\]|\\\(.*?\\\)", re.S),  # \[ \] and \( \) math
    re.compile(r"(?<![\\$])\$[^$\n]+\$"),  # inline math
    re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S),  # code spans
    re.compile(r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)"),  # link targets (the link's words stay)
    re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+.*$", re.M),  # reference-style link definitions
    re.compile(r"<https?://[^>]*>|https?://\S+"),  # URLs
    re.compile(r"</?[A-Za-z][^>]*>"),  # HTML tags (their text stays)
]
MIN_CHINESE_SHARE = 0.5


def prose(markdown: str) -> str:
    """``markdown`` without what reads the same in both languages (code, math, URLs, link targets, tags)."""
    for pattern in NOT_PROSE:
        markdown = pattern.sub(" ", markdown)
    return markdown


def chinese_share(markdown: str) -> float | None:
    """Han characters among the prose's units (Han characters + English words); None when it has no prose."""
    text = prose(markdown)
    han, words = len(HAN.findall(text)), len(ENGLISH_WORD.findall(text))
    return None if han + words == 0 else han / (han + words)


def mostly_english(markdown: str) -> bool:
    share = chinese_share(markdown)
    return share is not None and share < MIN_CHINESE_SHARE


def test_the_measure_rejects_an_english_cell_and_one_with_a_single_chinese_word() -> None:
    english = (
        "## The token budget\n\nEvery step the scheduler fills a budget of `max_tokens_per_step` tokens: decode first,\n"
        "one token per running request, then prefill chunks of at most `prefill_chunk_size` tokens."
    )
    assert chinese_share(english) == 0.0 and mostly_english(english)
    one_word = english + " This is the 调度器 at work."
    assert 0 < chinese_share(one_word) < 0.2 and mostly_english(one_word)
    short = "Run the next cell 运行"
    assert mostly_english(short)


def test_the_measure_accepts_chinese_with_english_terms_code_math_and_links() -> None:
    chinese = (
        "## token 预算\n\n每一步调度器（scheduler）都要装满一个 `max_tokens_per_step` 个 token 的预算：先排解码（decode），"
        "每个正在运行的请求一个 token，再排预填充（prefill）分块，每块最多 `prefill_chunk_size` 个 token。"
        "vLLM 和 SGLang 也是这样做的（[vLLM 文档](https://docs.vllm.ai/en/latest/configuration/optimization.html)），"
        "TTFT 与 TPOT 的定义见[术语表](../../docs/glossary_zh.md#time-to-first-token)，$B \\ge \\sum_i c_i$。\n\n"
        "```python\nengine = Engine(model, EngineConfig(max_tokens_per_step=16))  # the code stays English\n```"
    )
    assert chinese_share(chinese) > 0.8 and not mostly_english(chinese)
    assert chinese_share("```python\nprint('only code')\n```") is None  # nothing to judge: not English prose
    # the cuts matter: the same English words outside code spans tip a short Chinese line over
    assert not mostly_english("运行 `run the engine once more and compare` 即可")
    assert mostly_english("运行 run the engine once more and compare 即可")


def test_the_english_course_is_english_and_the_chinese_review_is_chinese() -> None:
    """An independent check of the measure: the English notebooks' cells fail it, the Chinese review's pass."""
    english = [c.source for p in sorted((ROOT / "notebooks").glob("[01]*.ipynb")) if "_zh" not in p.stem
               for c in nbformat.read(p, as_version=4).cells if c.cell_type == "markdown"]  # fmt: skip
    judged = [s for s in english if len(ENGLISH_WORD.findall(prose(s))) >= 5]
    assert len(judged) > 100 and [s[:60] for s in judged if not mostly_english(s)] == []
    review = nbformat.read(ROOT / "notebooks" / "18_interview_review_zh.ipynb", as_version=4)
    chinese = [c.source for c in review.cells if c.cell_type == "markdown" and HAN.search(c.source)]
    assert len(chinese) > 20 and [s[:60] for s in chinese if mostly_english(s)] == []


# --- the course's Chinese notebooks ------------------------------------------------------------------------------


def cells(path: Path, kind: str) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == kind]


@pytest.mark.parametrize("english", TRANSLATED, ids=IDS)
def test_the_chinese_notebook_is_built_from_its_sources(english: Path) -> None:
    assert mz.check(english) is None


@pytest.mark.parametrize("english", TRANSLATED, ids=IDS)
def test_code_cells_are_the_english_code_cells_byte_for_byte(english: Path) -> None:
    built = mz.built_path(english)
    assert built.exists(), f"{built} is missing: run python scripts/make_zh_notebooks.py"
    en, zh = cells(english, "code"), cells(built, "code")
    assert [c.source for c in zh] == [c.source for c in en]
    assert [c.id for c in zh] == [c.id for c in en]
    assert [c.metadata.get("tags", []) for c in zh] == [c.metadata.get("tags", []) for c in en]  # raises-exception...
    assert all(not c.outputs for c in zh)


@pytest.mark.parametrize("english", TRANSLATED, ids=IDS)
def test_every_markdown_cell_has_a_chinese_counterpart_in_place(english: Path) -> None:
    built = mz.built_path(english)
    en = nbformat.read(english, as_version=4).cells
    zh = nbformat.read(built, as_version=4).cells
    assert [(c.cell_type, c.id) for c in zh] == [(c.cell_type, c.id) for c in en]
    assert mz.problems(english, mz.read_text(mz.text_path(english))) == []


@pytest.mark.parametrize("english", TRANSLATED, ids=IDS)
def test_no_chinese_cell_is_mostly_english(english: Path) -> None:
    built = mz.built_path(english)
    english_cells = [c for c in cells(built, "markdown") if mostly_english(c.source)]
    assert [f"{c.id}: {chinese_share(c.source):.2f} {c.source[:70]!r}" for c in english_cells] == []


# --- links ----------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:href|src)=\"([^\"]+)\"")


def github_anchor(heading: str) -> str:
    """GitHub's rule (as tests/test_glossary_links.py): lower case, punctuation dropped, spaces to hyphens.
    Python's ``\\w`` keeps Han characters, as GitHub does."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """A page's link targets: its headings' GitHub anchors and any explicit ``id=`` / ``name=``."""
    markdown = NOT_PROSE[0].sub("", markdown)  # a '#' line inside fenced code is no heading
    found = {github_anchor(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.M)}
    return found | set(re.findall(r"""(?:id|name)=["']([^"']+)["']""", markdown))


def page_text(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n\n".join(c.source for c in cells(path, "markdown"))
    return path.read_text(encoding="utf-8")


def broken_links(markdown: str, folder: Path) -> list[str]:
    """Relative links in ``markdown`` (written as seen from ``folder``) whose file or ``#anchor`` is not there."""
    out = []
    for match in LINK.finditer(NOT_PROSE[5].sub(" ", NOT_PROSE[0].sub(" ", markdown))):
        target = match[1] or match[2]
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:, data:, ...
            continue
        path_part, _, anchor = unquote(target).partition("#")
        path = (folder / path_part).resolve() if path_part else None
        if path is not None and not path.exists():
            out.append(f"{target}: no such file")
        elif anchor and (path is None or path.suffix in (".md", ".ipynb")):
            if anchor not in anchors(page_text(path) if path else markdown):
                out.append(f"{target}: no heading or id '{anchor}'")
    return out


def test_the_link_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "zh").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "glossary_zh.md").write_text(
        '# 术语表\n\n## 连续批处理（continuous batching）\n\n<a id="ttft"></a>\n## 首 token 时延\n', encoding="utf-8"
    )
    good = (
        "[连续批处理](../docs/glossary_zh.md#连续批处理continuous-batching)、[TTFT](../docs/glossary_zh.md#ttft)、"
        "[外部](https://example.org/x)、`[代码](nowhere.md)`"
    )
    assert broken_links(good, tmp_path / "zh") == []
    bad = "[a](../docs/glossary.md) [b](../docs/glossary_zh.md#tpot) [c](01_missing.ipynb) [d](#no-heading)"
    assert broken_links(bad, tmp_path / "zh") == [
        "../docs/glossary.md: no such file",
        "../docs/glossary_zh.md#tpot: no heading or id 'tpot'",
        "01_missing.ipynb: no such file",
        "#no-heading: no heading or id 'no-heading'",
    ]


@pytest.mark.parametrize("english", TRANSLATED, ids=IDS)
def test_links_in_the_chinese_notebook_resolve(english: Path) -> None:
    built = mz.built_path(english)
    assert broken_links(page_text(built), built.parent) == []


ZH_MAP = ROOT / "notebooks" / "zh" / "README.md"


def test_the_chinese_course_map_links_resolve_and_list_only_built_notebooks() -> None:
    text = ZH_MAP.read_text(encoding="utf-8")
    assert broken_links(text, ZH_MAP.parent) == []
    listed = {Path(t).name for t in re.findall(r"\]\(([^)#]+\.ipynb)\)", text) if "/" not in t}
    built = {p.name for p in ZH_MAP.parent.glob("*.ipynb")}
    assert listed == built, "the map lists a Chinese notebook that does not exist, or leaves one out"
    assert "../README.md" in text  # and the way back to the English map
    english_map = (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")
    assert "(zh/README.md)" in english_map


# --- the script's error paths, on small synthetic notebooks --------------------------------------------------------


def make_course(root: Path, markdown: list[tuple[str, str]], code: list[tuple[str, str]]) -> Path:
    """``root/notebooks/01_demo.ipynb``: markdown and code cells interleaved, with fixed ids."""
    nb = nbformat.v4.new_notebook()
    for (mid, msrc), (cid, csrc) in zip(markdown, code):
        nb.cells += [nbformat.v4.new_markdown_cell(msrc, id=mid), nbformat.v4.new_code_cell(csrc, id=cid)]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="an output the build must drop\n")]
    path = root / "notebooks" / "01_demo.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


MARKDOWN = [("m1", "# One\n\nThe first cell."), ("m2", "Then the second.")]
CODE = [("c1", "x = 1  # code stays English\n"), ("c2", "print(x)\n")]


def write_text(english: Path, sections: list[tuple[str, str, str]]) -> Path:
    """The Chinese text file: ``(cell id, English it was translated from, Chinese)`` per section."""
    path = mz.text_path(english)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"<!-- cell: {cid} | en: {mz.english_hash(src)} -->\n{zh}\n" for cid, src, zh in sections)
    path.write_text(body, encoding="utf-8")
    return path


def test_a_good_translation_builds_and_checks(tmp_path: Path) -> None:
    english = make_course(tmp_path, MARKDOWN, CODE)
    write_text(english, [("m1", MARKDOWN[0][1], "# 第一\n\n第一个单元。"), ("m2", MARKDOWN[1][1], "然后是第二个。")])
    assert "missing" in mz.check(english)
    mz.built_path(english).write_text(mz.built_text(english), encoding="utf-8")
    assert mz.check(english) is None
    zh = nbformat.read(mz.built_path(english), as_version=4)
    assert [c.source for c in zh.cells] == ["# 第一\n\n第一个单元。", CODE[0][1], "然后是第二个。", CODE[1][1]]
    assert all(not c.outputs for c in zh.cells if c.cell_type == "code")
    assert zh.metadata["cblab_teach"] == {"lang": "zh", "english": "../01_demo.ipynb"}
    mz.built_path(english).write_text(mz.built_text(english).replace("第二个", "第 2 个"), encoding="utf-8")
    assert "out of date" in mz.check(english)  # a hand edit of the built notebook is caught


def test_a_stale_hash_names_the_cell_whose_english_changed(tmp_path: Path) -> None:
    english = make_course(tmp_path, MARKDOWN, CODE)
    write_text(english, [("m1", MARKDOWN[0][1], "# 第一"), ("m2", MARKDOWN[1][1], "第二。")])
    make_course(tmp_path, [MARKDOWN[0], ("m2", "Then the second, reworded.")], CODE)
    reason = mz.check(english)
    assert reason and "cell m2: the English changed since it was translated" in reason and "m1" not in reason
    with pytest.raises(mz.TextFileError, match="cell m2"):
        mz.build(english)


def test_a_missing_cell_an_unknown_id_a_twin_and_an_empty_section_are_named(tmp_path: Path) -> None:
    english = make_course(tmp_path, MARKDOWN, CODE)
    write_text(english, [("m1", MARKDOWN[0][1], "# 第一"), ("m9", "whatever", "不存在的单元"),
                         ("m1", MARKDOWN[0][1], "# 又一次"), ("m2", MARKDOWN[1][1], "")])  # fmt: skip
    found = mz.problems(english, mz.read_text(mz.text_path(english)))
    assert found == [
        "cell m9: no markdown cell with this id in 01_demo.ipynb",
        "cell m1: translated twice",
        "cell m2: empty translation",
    ]
    write_text(english, [("m1", MARKDOWN[0][1], "# 第一")])
    assert mz.problems(english, mz.read_text(mz.text_path(english))) == ["cell m2: no Chinese text"]
    assert "cell m2: no Chinese text" in mz.check(english)


def test_a_text_file_without_a_header_is_a_typed_error(tmp_path: Path) -> None:
    english = make_course(tmp_path, MARKDOWN, CODE)
    path = mz.text_path(english)
    path.parent.mkdir(parents=True)
    path.write_text("先写了一段没有标题的文字\n<!-- cell: m1 | en: 00000000 -->\n# 第一\n", encoding="utf-8")
    with pytest.raises(mz.TextFileError, match="must start with"):
        mz.read_text(path)
    assert "must start with" in mz.check(english)


def test_the_command_line_check_fails_on_stale_and_orphaned_files(tmp_path: Path, monkeypatch, capsys) -> None:
    english = make_course(tmp_path, MARKDOWN, CODE)
    write_text(english, [("m1", MARKDOWN[0][1], "# 第一"), ("m2", MARKDOWN[1][1], "第二。")])
    monkeypatch.setattr(mz, "REPO", tmp_path)
    assert mz.main(["--check"]) == 1 and "missing" in capsys.readouterr().out
    assert mz.main([]) == 0 and "wrote notebooks/zh/01_demo.ipynb" in capsys.readouterr().out
    (tmp_path / "notebooks" / "zh" / "README.md").write_text("# 课程地图\n", encoding="utf-8")  # not a text file
    assert mz.main(["--check"]) == 0 and mz.main(["--stale"]) == 0
    orphan = tmp_path / "notebooks" / "zh" / "02_gone.md"
    orphan.write_text("<!-- cell: m1 | en: 00000000 -->\n孤儿\n", encoding="utf-8")
    assert mz.main(["--check"]) == 1 and "no English notebook notebooks/02_gone.ipynb" in capsys.readouterr().out
    orphan.unlink()
    make_course(tmp_path, [MARKDOWN[0], ("m2", "Reworded.")], CODE)
    assert mz.main(["--stale"]) == 1 and "cell m2: the English changed" in capsys.readouterr().out


# --- the offline site's Chinese half (scripts/build_site.py), without executing anything --------------------------


def test_the_site_indexes_link_both_languages_and_the_chinese_pages_reach_the_chinese_docs(tmp_path: Path) -> None:
    pytest.importorskip("mistune")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_site
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert [p.name for p in build_site.course_notebooks("04", "zh")] == ["04_ragged_batching_mask.ipynb"]
    (tmp_path / "zh").mkdir()
    both = ("en", "zh")
    (tmp_path / "index.html").write_text(build_site.index_page([("04_x", "04 · x", 1.0, 1)], "en", both), "utf-8")
    entry = [("04_x", "04 · 不规则批处理", 1.0, 1)]
    (tmp_path / "zh" / "index.html").write_text(build_site.index_page(entry, "zh", both), "utf-8")
    page = build_site.rewrite_links(
        '<a href="../../docs/glossary_zh.md#prefill">预填充</a> <a href="../18_interview_review_zh.ipynb">复习</a> '
        '<a href="05_dense_vs_paged_kv.ipynb">05</a> <a href="../../exercises/ex01_ragged_mask.ipynb">练习</a>'
    )
    (tmp_path / "zh" / "04_x.html").write_text(page, encoding="utf-8")
    build_site.publish_docs(tmp_path)
    build_site.publish_teaching(tmp_path)
    en_index = (tmp_path / "index.html").read_text(encoding="utf-8")
    zh_index = (tmp_path / "zh" / "index.html").read_text(encoding="utf-8")
    assert 'href="zh/index.html"' in en_index and 'href="../index.html"' in zh_index
    assert '<html lang="zh-CN">' in zh_index and 'href="04_x.html">04 · 不规则批处理' in zh_index
    assert 'href="../glossary_zh.html"' in zh_index and 'href="../reading_zh.html"' in zh_index
    assert 'href="../teaching_zh.html"' in zh_index and 'href="glossary_zh.html"' not in en_index
    assert (tmp_path / "zh" / "04_x.html").read_text(encoding="utf-8") == (
        '<a href="../glossary_zh.html#prefill">预填充</a> <a href="../18_interview_review_zh.html">复习</a> '
        '<a href="05_dense_vs_paged_kv.html">05</a> <a href="../../exercises/ex01_ragged_mask.ipynb">练习</a>'
    )
    glossary = (tmp_path / "glossary_zh.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in glossary and 'id="prefill"' in glossary  # the anchor the link above names
