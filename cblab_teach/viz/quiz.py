"""A self-quiz over the interview Q&A: think first, then reveal the answer and its live demo.

The quiz is plain Python state (position, revealed, score) with ipywidgets
around it, so a test or a notebook cell can drive it exactly like a learner:
``reveal()``, ``mark(True)``, ``next()``, ``score``. Questions come from
:mod:`cblab_teach.qa`; a question's demo is a callable registered for its
number, by default the code cells of the interview-review notebook that follow
the question (tagged ``qa-<number>``), run after the notebook's setup cells
(tagged ``qa-setup``). The demo is the notebook's own code, so the quiz can
never drift from what the notebook shows.
"""

from __future__ import annotations

import ast
import contextlib
import html
import io
import json
import random
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import ipywidgets as widgets
from IPython.display import display

from ..qa import LANGS, QAError, QAItem, load_questions
from ..qa import topics as topic_names

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
LABELS = {
    "en": {
        "reveal": "Reveal answer + demo",
        "knew": "I knew it",
        "didnt": "I didn't",
        "next": "Next",
        "prev": "Previous",
        "shuffle": "Shuffle",
        "topic": "Topic",
        "all": "all topics",
        "answer": "Answer (Q&A)",
        "think": "Think it through, then reveal.",
        "score": "score",
        "demo": "Live demo",
        "no_demo": "No demo registered for this question.",
    },
    "zh": {
        "reveal": "显示答案与演示",
        "knew": "我答对了",
        "didnt": "我没答出",
        "next": "下一题",
        "prev": "上一题",
        "shuffle": "打乱",
        "topic": "主题",
        "all": "全部主题",
        "answer": "答案（原始 Q&A）",
        "think": "先自己想一想，再点显示。",
        "score": "得分",
        "demo": "现场演示",
        "no_demo": "这道题没有注册演示。",
    },
}

Demo = Callable[[], Any]
_DEMOS: dict[int, Demo] = {}


class QuizError(QAError):
    """A bad language, topic or question number given to the quiz."""


class Score(NamedTuple):
    correct: int
    answered: int


@dataclass
class DemoResult:
    """What a demo printed and returned (a figure, a string, None), or the error it raised."""

    text: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def register_demo(number: int, demo: Demo) -> None:
    """Use ``demo()`` (returning text, a figure or None) as the live demo of question ``number``, in every quiz."""
    _DEMOS[number] = demo


def notebook_path(lang: str) -> Path:
    return NOTEBOOKS_DIR / f"18_interview_review_{lang}.ipynb"


def _cells(lang: str) -> list[dict]:
    path = notebook_path(lang)
    if not path.is_file():
        return []
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _run(code: str, namespace: dict) -> Any:
    """Execute ``code`` like a notebook cell: the value of a final expression is returned."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<demo>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<demo>", "eval"), namespace)


_SETUP: dict[str, dict] = {}


def notebook_demo(number: int, lang: str = "en") -> Demo | None:
    """The code cells after question ``number`` in the ``lang`` review notebook, as a callable (None if none)."""
    cells = _cells(lang)
    body = [_source(c) for c in cells if f"qa-{number}" in _tags(c)]
    if not body:
        return None

    def demo() -> Any:
        if lang not in _SETUP:
            namespace: dict = {"__name__": "__quiz__"}
            for c in cells:
                if "qa-setup" in _tags(c):
                    _run(_source(c), namespace)
            _SETUP[lang] = namespace
        namespace = dict(_SETUP[lang])
        value = None
        for code in body:
            value = _run(code, namespace)
        return value

    return demo


def run_demo(demo: Demo) -> DemoResult:
    """Call a demo, capturing what it prints; an exception becomes the result's ``error``."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            value = demo()
    except Exception:  # a demo's failure is shown to the learner, never kills the quiz
        return DemoResult(out.getvalue(), None, traceback.format_exc(limit=3))
    return DemoResult(out.getvalue(), value)


class QuizWidget:
    """Flash cards over the interview Q&A, in English or Chinese, with a score and live demos.

    ``topics``: topic keys (``"mechanics"``) or section headings in either language;
    ``shuffle_seed``: a seed for a reproducible shuffled order (None keeps file order);
    ``demos``: {question number: callable}, overriding the registered and notebook demos.
    """

    def __init__(
        self,
        lang: str = "en",
        topics: Iterable[str] | None = None,
        shuffle_seed: int | None = None,
        demos: dict[int, Demo] | None = None,
    ) -> None:
        self._check_lang(lang)
        self.lang = lang
        self.demos = dict(demos or {})
        self.results: dict[int, bool] = {}  # question number -> knew it
        self.revealed = False
        self.last_demo: DemoResult | None = None
        self.shuffle_seed = shuffle_seed
        self.topics = self._resolve_topics(topics)
        self._build_widgets()
        self._reorder()

    # -- state ----------------------------------------------------------------------
    @staticmethod
    def _check_lang(lang: str) -> None:
        if lang not in LANGS:
            raise QuizError(f"lang must be one of {LANGS}, got {lang!r}")

    def _resolve_topics(self, topics: Iterable[str] | None) -> list[str] | None:
        if topics is None:
            return None
        if isinstance(topics, str):
            topics = [topics]
        names = {key: key for key in topic_names("en")}
        for lang in LANGS:
            names.update({section: key for key, section in topic_names(lang).items()})
        keys = []
        for t in topics:
            if t not in names:
                raise QuizError(f"unknown topic {t!r}; choose from {sorted(topic_names('en'))}")
            keys.append(names[t])
        return keys

    def _reorder(self, keep: int | None = None) -> None:
        items = [q for q in load_questions(self.lang) if self.topics is None or q.topic in self.topics]
        if self.shuffle_seed is not None:
            random.Random(self.shuffle_seed).shuffle(items)
        self.questions: list[QAItem] = items
        numbers = [q.number for q in items]
        self.index = numbers.index(keep) if keep in numbers else 0
        self.revealed = False
        self.last_demo = None
        self._render()

    @property
    def current(self) -> QAItem:
        return self.questions[self.index]

    @property
    def score(self) -> Score:
        """(known, answered) over the questions marked so far, whatever the filter or language."""
        return Score(sum(self.results.values()), len(self.results))

    def demo_for(self, number: int) -> Demo | None:
        return self.demos.get(number) or _DEMOS.get(number) or notebook_demo(number, self.lang)

    # -- actions ----------------------------------------------------------------------
    def reveal(self, run_demo_: bool = True) -> DemoResult | None:
        """Show the answer and run the question's demo; returns what the demo gave (None without one)."""
        self.revealed = True
        demo = self.demo_for(self.current.number) if run_demo_ else None
        self.last_demo = run_demo(demo) if demo is not None else None
        self._render()
        return self.last_demo

    def mark(self, correct: bool) -> Score:
        """Record whether the learner knew the current question (marking again replaces), then move on."""
        self.results[self.current.number] = bool(correct)
        self.next()
        from ..progress_store import record_quiz  # the score goes into the learner's local progress record

        record_quiz(*self.score)
        return self.score

    def next(self) -> QAItem:
        self.index = (self.index + 1) % len(self.questions)
        self.revealed = False
        self.last_demo = None
        self._render()
        return self.current

    def previous(self) -> QAItem:
        self.index = (self.index - 1) % len(self.questions)
        self.revealed = False
        self.last_demo = None
        self._render()
        return self.current

    def go_to(self, number: int) -> QAItem:
        """Jump to the question with this number (it must pass the topic filter)."""
        numbers = [q.number for q in self.questions]
        if number not in numbers:
            raise QuizError(f"question {number!r} is not in this quiz (numbers: {numbers})")
        self.index = numbers.index(number)
        self.revealed = False
        self.last_demo = None
        self._render()
        return self.current

    def shuffle(self, seed: int | None = None) -> list[int]:
        """A new order (seeded: the same seed gives the same order); returns the question numbers in order."""
        self.shuffle_seed = random.randrange(2**31) if seed is None else seed
        self._reorder()
        return [q.number for q in self.questions]

    def filter(self, topics: Iterable[str] | None) -> list[int]:
        """Keep only these topics (None: all); returns the question numbers left."""
        self.topics = self._resolve_topics(topics)
        self._reorder(keep=self.current.number if self.questions else None)
        self._set_labels()
        return [q.number for q in self.questions]

    def set_language(self, lang: str) -> QAItem:
        """Switch language, staying on the same question; the score carries over."""
        self._check_lang(lang)
        self.lang = lang
        self._reorder(keep=self.current.number)
        self._set_labels()
        self.lang_toggle.value = lang
        return self.current

    # -- widgets ----------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.header = widgets.HTML()
        self.question_html = widgets.HTML()
        self.answer_out = widgets.Output()
        self.reveal_button = widgets.Button(button_style="primary")
        self.knew_button = widgets.Button(button_style="success")
        self.didnt_button = widgets.Button(button_style="warning")
        self.prev_button = widgets.Button()
        self.next_button = widgets.Button()
        self.shuffle_button = widgets.Button()
        self.topic_select = widgets.Dropdown()
        self.lang_toggle = widgets.ToggleButtons(options=[("English", "en"), ("中文", "zh")], value=self.lang)
        self.reveal_button.on_click(lambda _: self.reveal())
        self.knew_button.on_click(lambda _: self.mark(True))
        self.didnt_button.on_click(lambda _: self.mark(False))
        self.prev_button.on_click(lambda _: self.previous())
        self.next_button.on_click(lambda _: self.next())
        self.shuffle_button.on_click(lambda _: self.shuffle())
        self.lang_toggle.observe(self._on_language, names="value")
        self.topic_select.observe(self._on_topic, names="value")
        self._set_labels()
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.lang_toggle, self.topic_select, self.shuffle_button]),
                self.header,
                self.question_html,
                widgets.HBox([self.reveal_button, self.knew_button, self.didnt_button]),
                widgets.HBox([self.prev_button, self.next_button]),
                self.answer_out,
            ]
        )

    def _set_labels(self) -> None:
        text = LABELS[self.lang]
        for button, key in (
            (self.reveal_button, "reveal"),
            (self.knew_button, "knew"),
            (self.didnt_button, "didnt"),
            (self.prev_button, "prev"),
            (self.next_button, "next"),
            (self.shuffle_button, "shuffle"),
        ):
            button.description = text[key]
        options = [(text["all"], "")] + [(name, key) for key, name in topic_names(self.lang).items()]
        current = self.topics[0] if self.topics and len(self.topics) == 1 else ""
        self._updating = True
        self.topic_select.options = options
        self.topic_select.value = current
        self.topic_select.description = text["topic"]
        self._updating = False

    def _on_language(self, change: dict) -> None:
        if change["new"] != self.lang:
            self.set_language(change["new"])

    def _on_topic(self, change: dict) -> None:
        if not getattr(self, "_updating", False):
            self.filter([change["new"]] if change["new"] else None)

    def _render(self) -> None:
        if not hasattr(self, "header") or not self.questions:
            return
        text, q = LABELS[self.lang], self.current
        correct, answered = self.score
        self.header.value = (
            f"<b>{html.escape(q.section)}</b> · {self.index + 1} / {len(self.questions)}"
            f" · {text['score']} {correct} / {answered}"
        )
        self.question_html.value = f"<h3>Q{q.number}. {html.escape(q.question)}</h3>"
        self.answer_out.clear_output()
        with self.answer_out:
            if not self.revealed:
                display(widgets.HTML(f"<i>{text['think']}</i>"))
                return
            display(widgets.HTML(f"<p><b>{text['answer']}:</b> {html.escape(q.answer)}</p>"))
            result = self.last_demo
            if result is None:
                display(widgets.HTML(f"<i>{text['no_demo']}</i>"))
                return
            body = result.text + (result.error or "")
            display(widgets.HTML(f"<b>{text['demo']}</b><pre>{html.escape(body)}</pre>"))
            if result.value is not None:
                display(result.value)

    def _ipython_display_(self) -> None:
        display(self.widget)
