"""The interview Q&A: seeds parsed, every question answered in both notebooks with code, every name real, quiz works."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import nbformat
import pytest

import cblab_teach
from cblab_teach import CBLabError, EngineConfig, Request
from cblab_teach.qa import QAError, load_questions, parse_questions, qa_path
from cblab_teach.viz.quiz import QuizError, QuizWidget, notebook_demo, notebook_path

REPO = Path(cblab_teach.__file__).resolve().parent.parent
PACKAGE = REPO / "cblab_teach"
SHARED_SEEDS = REPO.parent / "shared" / "seeds"
LANGS = ("en", "zh")
CJK = re.compile(r"[\u4e00-\u9fff]")


def seed_text(lang: str) -> str:
    return qa_path(lang).read_text(encoding="utf-8")


def code_cells_by_question(lang: str) -> dict[int, list[str]]:
    """Question number -> sources of the code cells between its heading and the next question's heading."""
    nb = nbformat.read(notebook_path(lang), as_version=4)
    items = load_questions(lang)
    out: dict[int, list[str]] = {}
    current = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            hit = [q.number for q in items if q.question in cell.source and cell.source.lstrip().startswith("###")]
            if hit:
                current = hit[0]
                out[current] = []
            elif cell.source.lstrip().startswith(("## ", "# ")):
                current = None  # a section heading or the closing part ends a question's cells
        elif current is not None:
            out[current].append(cell.source)
    return out


# -- the seed files and their copies ---------------------------------------------------------------------
# docs/ is the seed, rendered cleanly: UTF-8 read as cp1252 ("attentionâ€”outside") put back, and the Chinese
# questions whose bold was never closed (or closed right after 问：) given one pair of ** around the question.
MOJIBAKE = {"â€”": "—", "â€“": "–", "â€™": "’", "â€˜": "‘", "â€œ": "“", "â€\x9d": "”", "â€¦": "…"}
_ZH_UNCLOSED = re.compile(r"^(- \*\*问：)(?!\*\*)([^*\n]*?)(\s*)$", re.M)
_ZH_CLOSED_EARLY = re.compile(r"^- \*\*问：\*\*([^*\n]*?)(\s*)$", re.M)
_NO_BREAK = re.compile(r"^(- \*\*(?:Q:|问：).*\S)$", re.M)  # a question line without the two-space line break


def clean_seed(text: str) -> str:
    """The seed as docs/ renders it; nothing else may differ."""
    for bad, good in MOJIBAKE.items():
        text = text.replace(bad, good)
    text = _ZH_CLOSED_EARLY.sub(lambda m: f"- **问：{m.group(1)}**{m.group(2)}", text)
    text = _ZH_UNCLOSED.sub(lambda m: f"{m.group(1)}{m.group(2)}**{m.group(3)}", text)
    return _NO_BREAK.sub(r"\1  ", text)  # every question line ends in a line break, so its answer renders below it


@pytest.mark.parametrize("lang", LANGS)
def test_docs_copy_is_the_shared_seed_rendered_cleanly(lang):
    shared = SHARED_SEEDS / f"interview_qa_{lang}.md"
    if not SHARED_SEEDS.is_dir():
        pytest.skip("no ../shared/seeds beside this checkout")
    assert qa_path(lang).read_text(encoding="utf-8") == clean_seed(shared.read_text(encoding="utf-8"))


@pytest.mark.parametrize("lang", LANGS)
def test_docs_render_cleanly(lang):
    text = qa_path(lang).read_text(encoding="utf-8")
    assert not any(bad in text for bad in MOJIBAKE), "mojibake left in the docs"
    for line in text.splitlines():
        if line.startswith(("- **Q:", "- **问：")):
            assert line.count("**") % 2 == 0, f"unclosed bold: {line!r}"
    assert clean_seed("a â€” b\n- **问：好吗？\n- **问：**对吗？  \n") == "a — b\n- **问：好吗？**  \n- **问：对吗？**  \n"


def test_both_languages_have_the_same_questions_and_sections():
    en, zh = load_questions("en"), load_questions("zh")
    assert len(en) == len(zh) >= 30
    assert [q.topic for q in en] == [q.topic for q in zh]
    assert [q.number for q in en] == list(range(1, len(en) + 1))
    assert len({q.section for q in en}) == len({q.section for q in zh}) == len({q.topic for q in en})
    for q in zh:
        assert CJK.search(q.question) or q.question.startswith(
            ("SchedulerPlugin", "MetricsCollector", "MemoryProfiler")
        )
        assert q.answer and "**" not in q.question and not q.question.startswith(("问", "Q:"))


@pytest.mark.parametrize("lang", LANGS)
def test_parser_finds_every_question_line(lang):
    """Count question markers in the raw text independently of the parser."""
    marker = "- **Q:**" if lang == "en" else "- **问："
    assert len(load_questions(lang)) == seed_text(lang).count(marker)


def test_parser_handles_the_malformed_chinese_bold_and_rejects_a_missing_answer():
    text = "## 机制\n- **问：调度器插件如何工作？\n  **答：** 钩子。\n- **问：**压缩插件的作用？\n  **答：** 量化。\n"
    assert parse_questions(text) == [("机制", "调度器插件如何工作？", "钩子。"), ("机制", "压缩插件的作用？", "量化。")]
    with pytest.raises(QAError, match="no answer"):
        parse_questions("## S\n- **Q:** Lonely question?\n")
    with pytest.raises(QAError, match="lang"):
        load_questions("fr")
    assert issubclass(QAError, CBLabError)


# -- every name the Q&A mentions is real code ---------------------------------------------------------------
def _defined_classes() -> dict[str, set[str]]:
    """Class name -> method and attribute names, from the source of the whole package."""
    classes: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                members = classes.setdefault(node.name, set())
                members.update(n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return classes


@pytest.mark.parametrize("lang", LANGS)
def test_every_file_path_in_the_seeds_exists(lang):
    paths = set(re.findall(r"`([\w/*.]+\.py)`", seed_text(lang)))
    assert {"core/scheduler.py", "core/batch_builder.py", "core/kv_cache.py", "attention/*.py"} <= paths
    for name in paths:
        base = REPO if name.startswith("tests/") else PACKAGE
        assert list(base.glob(name)), f"{name} (mentioned in the {lang} seed) matches no file under {base}"


@pytest.mark.parametrize("lang", LANGS)
def test_every_class_and_method_in_the_seeds_exists(lang):
    text = seed_text(lang)
    classes = _defined_classes()
    names = set(re.findall(r"\b([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)(?:\.(\w+))?", text))
    assert {n for n, _ in names} >= {"SchedulerPlugin", "CachePlugin", "MetricsCollector", "MemoryLeakDetector"}
    for cls, member in names:
        assert cls in classes, f"class {cls} (mentioned in the {lang} seed) is defined nowhere in cblab_teach"
        if member:
            assert member in classes[cls], f"{cls}.{member} is not a method of {cls}"
    # and they import from where the course says
    from cblab_teach.monitoring import DetailedMemoryProfiler, MemoryLeakDetector, MemoryProfiler, MetricsCollector
    from cblab_teach.plugins.base import AttentionPlugin, CachePlugin, SchedulerPlugin

    public = {c.__name__ for c in (DetailedMemoryProfiler, MemoryLeakDetector, MemoryProfiler, MetricsCollector)}
    public |= {c.__name__ for c in (AttentionPlugin, CachePlugin, SchedulerPlugin)} | {"PagedAllocator"}
    assert {n for n, _ in names} <= public


@pytest.mark.parametrize("lang", LANGS)
def test_every_hook_and_setting_in_the_seeds_exists(lang):
    from cblab_teach.plugins.base import CachePlugin, SchedulerPlugin

    text = seed_text(lang)
    hooks = set(re.findall(r"`(\w+)\(\)`", text))
    assert hooks == {"before_step", "after_step", "on_request_completion", "before_append", "after_append"}
    for hook in hooks:
        assert callable(getattr(SchedulerPlugin, hook, None)) or callable(getattr(CachePlugin, hook, None)), hook
    settings = {n for n in re.findall(r"`([a-z]+_[a-z_]+)`", text)}
    assert {"max_tokens_per_step", "prefill_chunk_size", "prefill_pos", "max_new_tokens"} <= settings
    known = {f.name for f in dataclasses.fields(EngineConfig)} | {f.name for f in dataclasses.fields(Request)}
    known |= {name for name in dir(Request) if not name.startswith("_")}
    assert settings <= known, settings - known


# -- the notebooks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lang", LANGS)
def test_every_question_is_in_its_notebook_in_order_with_code_after_it(lang):
    items = load_questions(lang)
    cells = code_cells_by_question(lang)
    missing = [q.question for q in items if q.number not in cells]
    assert not missing, f"questions missing from the {lang} notebook: {missing}"
    for q in items:
        code = [c for c in cells[q.number] if c.strip()]
        assert code, f"question {q.number} ({q.question!r}) has no code cell before the next question"
        assert any("assert " in c for c in code), f"question {q.number} checks nothing"
    nb = nbformat.read(notebook_path(lang), as_version=4)
    order, section = [], None
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        if cell.source.startswith("## "):
            section = cell.source[3:].splitlines()[0].strip()
        for q in items:
            if cell.source.lstrip().startswith("###") and q.question in cell.source:
                order.append(q.number)
                assert section == q.section, f"question {q.number} sits under {section!r}, not {q.section!r}"
    assert order == [q.number for q in items], "questions out of the Q&A's order"


class _BlankStrings(ast.NodeTransformer):
    """Strings are translated, code is not: compare syntax trees with every string emptied."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        return ast.Constant("") if isinstance(node.value, str) else node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return ast.Constant("")


def _code_shape(source: str) -> str:
    return ast.dump(_BlankStrings().visit(ast.parse(source)))


def test_both_notebooks_run_the_same_code_per_question():
    en, zh = code_cells_by_question("en"), code_cells_by_question("zh")
    assert en.keys() == zh.keys()
    for number in en:
        assert len(en[number]) == len(zh[number]), f"question {number}: different number of code cells"
        for a, b in zip(en[number], zh[number]):
            assert _code_shape(a) == _code_shape(b), f"question {number}: the code differs between languages"


def test_the_chinese_notebook_is_in_chinese():
    nb = nbformat.read(notebook_path("zh"), as_version=4)
    prose = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert sum(bool(CJK.search(p)) for p in prose) >= 0.9 * len(prose)
    comments = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines() if "# " in line]
    comments = [line[line.index("# ") :] for line in comments if "noqa" not in line]
    assert comments and sum(bool(CJK.search(c)) for c in comments) >= 0.9 * len(comments)


@pytest.mark.parametrize("lang", LANGS)
def test_notebook_is_committed_clean_and_ends_with_the_quiz(lang):
    nb = nbformat.read(notebook_path(lang), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before committing"
    assert "setup_notebook()" in code[0].source
    assert "QuizWidget" in code[-1].source or "QuizWidget" in code[-2].source
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    assert any("Interview corner" in h or "面试角" in h for h in headings)


# -- the quiz -------------------------------------------------------------------------------------------------
def test_quiz_reveal_runs_the_demo_and_keeps_score():
    calls = []

    def demo():
        calls.append(1)
        print("live output")
        return "a figure or a value"

    quiz = QuizWidget("en", demos={1: demo})
    assert quiz.current.number == 1 and not quiz.revealed
    result = quiz.reveal()
    assert calls == [1] and quiz.revealed and result.ok
    assert result.text == "live output\n" and result.value == "a figure or a value"
    assert quiz.mark(True) == (1, 1) and quiz.current.number == 2 and not quiz.revealed
    assert quiz.mark(False) == (1, 2)
    quiz.go_to(1)
    quiz.mark(False)  # marking a question again replaces its result
    assert quiz.score == (0, 2)
    assert "0 / 2" in quiz.header.value


def test_quiz_survives_a_failing_demo_and_buttons_drive_it():
    quiz = QuizWidget("en", demos={1: lambda: 1 / 0})
    quiz.reveal_button.click()
    assert quiz.revealed and quiz.last_demo is not None and "ZeroDivisionError" in quiz.last_demo.error
    quiz.knew_button.click()
    assert quiz.score == (1, 1) and quiz.current.number == 2
    quiz.prev_button.click()
    assert quiz.current.number == 1
    quiz.next_button.click()
    quiz.didnt_button.click()
    assert quiz.score == (1, 2)


def test_quiz_shuffle_is_deterministic_with_a_seed():
    numbers = [q.number for q in load_questions("en")]
    a = [q.number for q in QuizWidget("en", shuffle_seed=5).questions]
    b = [q.number for q in QuizWidget("zh", shuffle_seed=5).questions]
    assert a == b and sorted(a) == numbers and a != numbers
    quiz = QuizWidget("en")
    assert quiz.shuffle(7) == quiz.shuffle(7) != quiz.shuffle(8)


def test_quiz_topic_filter_in_either_language():
    mechanics = [q.number for q in load_questions("en") if q.section == "Mechanics"]
    assert mechanics == [4, 5, 6, 7]
    assert [q.number for q in QuizWidget("en", topics=["mechanics"]).questions] == mechanics
    assert [q.number for q in QuizWidget("zh", topics="机制").questions] == mechanics
    quiz = QuizWidget("en", topics=["Mechanics", "KV layout"])
    assert {q.topic for q in quiz.questions} == {"mechanics", "kv_layout"}
    assert quiz.filter(None) == [q.number for q in load_questions("en")]
    quiz.topic_select.value = "kv_layout"  # the dropdown, as a learner would use it
    assert [q.number for q in quiz.questions] == [11, 12]
    quiz.lang_toggle.value = "zh"
    assert quiz.lang == "zh" and quiz.current.section == "KV 布局"
    with pytest.raises(QuizError, match="unknown topic"):
        QuizWidget("en", topics=["cooking"])
    with pytest.raises(QuizError, match="lang"):
        QuizWidget("de")


def test_quiz_switches_language_on_the_same_question_and_keeps_score():
    quiz = QuizWidget("en", demos={3: lambda: None})
    quiz.go_to(3)
    quiz.mark(True)
    quiz.go_to(3)
    english = quiz.current.question
    quiz.set_language("zh")
    assert quiz.current.number == 3 and quiz.current.question != english and CJK.search(quiz.current.question)
    assert quiz.score == (1, 1) and quiz.reveal_button.description == "显示答案与演示"


@pytest.mark.parametrize("lang", LANGS)
def test_every_question_has_a_notebook_demo_and_one_runs(lang):
    assert all(notebook_demo(q.number, lang) is not None for q in load_questions(lang))
    quiz = QuizWidget(lang)
    quiz.go_to(6)
    result = quiz.reveal()  # the notebook's own cells for the causal-mask question
    assert result.ok, result.error
    assert "■" in result.text
