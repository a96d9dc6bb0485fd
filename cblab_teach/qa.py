"""The interview Q&A as data: parse ``docs/interview_qa_{en,zh}.md`` into questions and answers.

The two files hold the same questions, in the same order and the same sections,
in English and Chinese. ``number`` (1-based position) and ``topic`` (a slug of
the English section name) are shared by both languages, so a question, its
notebook cell and its quiz demo line up whatever the language.

The files in ``docs/`` close their bold, but the original Chinese Q&A they were
edited from left thirteen questions without a closing ``**``, and hand edits can
do it again. So the parser keys on the ``Q:`` / ``问：`` and ``A:`` / ``答：``
labels and strips emphasis markers around them, instead of trusting the bold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import CBLabError

LANGS = ("en", "zh")
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"

_QUESTION = re.compile(r"^-\s+\**\s*(?:Q:|问[:：])\s*\**\s*(?P<text>.*)$")
_ANSWER = re.compile(r"^\**\s*(?:A:|答[:：])\s*\**\s*(?P<text>.*)$")


class QAError(CBLabError):
    """The Q&A files are missing, malformed, or a language is unknown."""


@dataclass(frozen=True)
class QAItem:
    """One question of the interview Q&A."""

    section: str  # the section heading, in the file's language
    question: str
    answer: str
    number: int = 0  # 1-based position, the same in every language
    topic: str = ""  # language-independent section key, e.g. "mechanics"


def qa_path(lang: str = "en", docs_dir: Path | str | None = None) -> Path:
    """Where the Q&A of ``lang`` lives (``docs/interview_qa_<lang>.md``)."""
    if lang not in LANGS:
        raise QAError(f"lang must be one of {LANGS}, got {lang!r}")
    return Path(docs_dir or DOCS_DIR) / f"interview_qa_{lang}.md"


def _clean(text: str) -> str:
    """Drop the Markdown emphasis and line-break spaces around a question or answer."""
    return text.strip().strip("*").strip()


def parse_questions(text: str) -> list[tuple[str, str, str]]:
    """``(section, question, answer)`` for every question of a Q&A Markdown text, in order."""
    items: list[list[str]] = []
    section = ""
    expecting_answer = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("## "):
            section = stripped[3:].strip()
            expecting_answer = False
            continue
        question = _QUESTION.match(stripped)
        if question:
            items.append([section, _clean(question["text"]), ""])
            expecting_answer = True
            continue
        answer = _ANSWER.match(stripped)
        if answer and expecting_answer:
            items[-1][2] = _clean(answer["text"])
            expecting_answer = False
            continue
        if stripped and items and not expecting_answer and items[-1][2] and not stripped.startswith("#"):
            items[-1][2] += " " + _clean(stripped)  # an answer wrapped over several lines
        elif not stripped and items and items[-1][2]:
            expecting_answer = False
    for section, question, answer in items:
        if not answer:
            raise QAError(f"question {question!r} in section {section!r} has no answer line")
    return [tuple(item) for item in items]  # type: ignore[misc]


def _slug(section: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", section.lower()).strip("_")


@lru_cache(maxsize=8)
def _load(lang: str, docs_dir: str) -> tuple[QAItem, ...]:
    path = qa_path(lang, docs_dir)
    if not path.is_file():
        raise QAError(f"the Q&A file {path} does not exist")
    rows = parse_questions(path.read_text(encoding="utf-8"))
    english = rows if lang == "en" else parse_questions(qa_path("en", docs_dir).read_text(encoding="utf-8"))
    if len(english) != len(rows):
        raise QAError(f"{path.name} has {len(rows)} questions but the English file has {len(english)}")
    return tuple(
        QAItem(section, question, answer, number=i + 1, topic=_slug(english[i][0]))
        for i, (section, question, answer) in enumerate(rows)
    )


def load_questions(lang: str = "en", docs_dir: Path | str | None = None) -> list[QAItem]:
    """Every question of the ``lang`` Q&A (``"en"`` or ``"zh"``), in file order."""
    return list(_load(lang, str(Path(docs_dir or DOCS_DIR).resolve())))


def topics(lang: str = "en", docs_dir: Path | str | None = None) -> dict[str, str]:
    """Topic key -> section heading in ``lang``, in file order."""
    return {item.topic: item.section for item in load_questions(lang, docs_dir)}
