"""Hints teach instead of telling: a stub's message names the task, and the help waits in three tiers.

A learner who runs an exercise cell before thinking reads the stub's ``NotImplementedError`` message, so it
must not hold the algorithm. ``make_exercises.message_problems`` decides what reads as code or a formula:
an operator, bracket, quote or backtick; a minus sign (a hyphen between two letters is fine); a digit; an
identifier with an underscore; a dotted name; a CamelCase name; a Python keyword used as code (``None``,
``lambda``, ``for x in``...). The help sits in the markdown cell right after the exercise cell: three
collapsible ``<details>`` tiers, a nudge, the idea, pseudo-code in words, none of them quoting the solution.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISE_DIR = REPO / "solutions", REPO / "exercises"
TIERS = ("Hint 1: a nudge", "Hint 2: the idea", "Hint 3: pseudo-code")
DETAILS = re.compile(r"<details><summary>(.*?)</summary>(.*?)</details>", flags=re.S)
MIN_QUOTED = 12  # a solution line this long found anywhere inside a hint is a quote, not a coincidence


def _script():
    spec = importlib.util.spec_from_file_location("make_exercises", REPO / "scripts" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_exercises = _script()
NAMES = [p.stem for p in make_exercises._notebooks(SOLUTIONS)]

# The stub messages of the first exercises, quoted from the notebooks before this rule: each gave the answer away.
OLD_EX13 = (
    "n = how many leading drafts equal target_best at the same index; append drafts[:n] + [target_best[n]]; "
    "truncate len(drafts) - n slots"
)
OLD_EX08 = (
    "note the step of every token of every request (record.new_tokens), then apply the three formulas above; "
    "N == 1 has no TPOT"
)
OLD_EX10 = (
    "bytes per token = 2 * layers * KV heads (not query heads) * head_dim * dtype_bytes; blocks = pool_bytes // "
    "(bytes per token * block_size); each request takes ceil(tokens / block_size) blocks"
)


def stub_messages(source: str) -> list[str]:
    """The text of every ``raise NotImplementedError("...")`` in a cell."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            call = node.exc
            if isinstance(call.func, ast.Name) and call.func.id == "NotImplementedError":
                assert len(call.args) == 1 and isinstance(call.args[0], ast.Constant), ast.unparse(node)
                found.append(call.args[0].value)
    return found


def tiers(markdown: str) -> list[tuple[str, str]]:
    """(summary, body) of every collapsible block of a markdown cell, in order."""
    return [(summary.strip(), body.strip()) for summary, body in DETAILS.findall(markdown)]


def solution_lines(source: str) -> set[str]:
    """The code lines (stripped, no blanks or comments) inside a cell's solution regions."""
    lines: set[str] = set()
    inside = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == make_exercises.BEGIN:
            inside = True
        elif stripped == make_exercises.END:
            inside = False
        elif inside and stripped and not stripped.startswith("#"):
            lines.add(stripped)
    return lines


def quoted_lines(hint: str, solution: set[str]) -> list[str]:
    """Solution lines a hint repeats: as a whole line of the hint, or (when long enough) anywhere inside it."""
    hint_lines = {re.sub(r"^(?:[-*]|\d+\.)\s+", "", line.strip()).strip("`").strip() for line in hint.splitlines()}
    flat = " ".join(hint.split())
    return sorted(s for s in solution if s in hint_lines or (len(s) >= MIN_QUOTED and " ".join(s.split()) in flat))


def exercise_cells(nb) -> list[int]:
    """Indices of the cells that hold a solution region (in solutions/) or a stub (in exercises/)."""
    return [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (make_exercises.BEGIN in c.source or "raise NotImplementedError(" in c.source)
    ]


# --- the rule itself -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("old", [OLD_EX13, OLD_EX08, OLD_EX10], ids=["ex13", "ex08", "ex10"])
def test_the_old_messages_that_gave_the_answer_away_are_refused(old):
    assert make_exercises.message_problems(f"{old}; {make_exercises.HINTS_BELOW}")
    with pytest.raises(ValueError, match="gives the answer away"):
        make_exercises.stub_message([old])


@pytest.mark.parametrize(
    ("message", "sign"),
    [
        ("truncate all but the accepted ones", None),
        ("append drafts then the bonus", None),
        ("keep n of them", None),
        ("keep the first n drafts", None),
        ("truncate k - n slots", "minus"),
        ("scale by target/observed", "operator"),
        ("return the pair (tokens, slots)", "operator"),
        ("compare with target_best", "underscore"),
        ("read record.new_tokens", "dotted"),
        ("read each record.tokens", "dotted"),
        ("multiply by 2", "digit"),
        ("use a StepPlan", "CamelCase"),
        ("return None for one token", "keyword"),
        ("sum x for x in weights", "keyword"),
        ("clip to the range", None),
    ],
)
def test_each_sign_of_code_is_named(message, sign):
    problems = make_exercises.message_problems(f"{message}; {make_exercises.HINTS_BELOW}")
    if sign is None:
        assert problems == [], problems
    else:
        assert any(sign in p for p in problems), problems


def test_a_plain_sentence_that_points_to_the_hints_is_accepted():
    for sentence in (
        "write the decode-first pass; see the hints below",
        "write append, which stores the request's new tokens; see the hints below",
    ):
        assert make_exercises.message_problems(sentence) == [], sentence
    assert make_exercises.message_problems("write the decode-first pass")  # says nothing about the hints
    assert make_exercises.message_problems("write it " + "and more " * 20 + "; see the hints below")  # too long


def test_the_generator_appends_the_pointer_to_the_hints():
    stubbed, _ = make_exercises.stub_source(
        "def f():\n    ### BEGIN SOLUTION\n    # HINT: write f\n    return 1\n    ### END SOLUTION"
    )
    assert stubbed.endswith('raise NotImplementedError("write f; see the hints below")')
    with pytest.raises(ValueError, match="digit"):
        make_exercises.stub_source(
            "def f():\n    ### BEGIN SOLUTION\n    # HINT: return 1\n    return 1\n    ### END SOLUTION"
        )


def test_the_tier_parser_and_the_quote_finder_can_fail():
    cell = (
        "<details><summary>Hint 1: a nudge</summary>\n\nthink\n\n</details>\n<details><summary>x</summary>y</details>"
    )
    assert tiers(cell) == [("Hint 1: a nudge", "think"), ("x", "y")]
    solution = solution_lines(
        "def f(n):\n    ### BEGIN SOLUTION\n    # a comment\n    n += 1\n"
        "    return drafts[:n] + [target_best[n]]\n    ### END SOLUTION\n"
    )
    assert solution == {"n += 1", "return drafts[:n] + [target_best[n]]"}
    assert quoted_lines("- `n += 1`", solution) == ["n += 1"]
    assert quoted_lines("so return drafts[:n] +\n[target_best[n]] and stop", solution) == [
        "return drafts[:n] + [target_best[n]]"
    ]
    assert quoted_lines("count the agreeing drafts, then add the bonus", solution) == []


# --- every exercise follows it -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_no_stub_message_holds_code_or_a_formula(name):
    exercise = nbformat.read(EXERCISE_DIR / f"{name}.ipynb", as_version=4)
    messages = [m for c in exercise.cells if c.cell_type == "code" for m in stub_messages(c.source)]
    solution = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    assert len(messages) == sum(c.source.count(make_exercises.BEGIN) for c in solution.cells if c.cell_type == "code")
    for message in messages:
        assert make_exercises.message_problems(message) == [], f"{name}: {message!r}"


@pytest.mark.parametrize("folder", [SOLUTIONS, EXERCISE_DIR], ids=["solutions", "exercises"])
@pytest.mark.parametrize("name", NAMES)
def test_three_hint_tiers_follow_every_exercise_cell(folder, name):
    nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    cells = exercise_cells(nb)
    assert cells, f"{name} has no exercise cell"
    for i in cells:
        after = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        assert after is not None and after.cell_type == "markdown", f"{name}: no hints cell after cell {i}"
        found = tiers(after.source)
        assert [summary for summary, _ in found] == list(TIERS), f"{name}: hint tiers {found}"
        assert all(len(body.split()) >= 10 for _, body in found), f"{name}: an empty hint tier"


@pytest.mark.parametrize("name", NAMES)
def test_no_hint_quotes_the_solution_and_the_pseudo_code_is_not_python(name):
    nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    for i in exercise_cells(nb):
        solution = solution_lines(nb.cells[i].source)
        assert solution, f"{name}: cell {i} has an empty solution region"
        for summary, body in tiers(nb.cells[i + 1].source):
            assert quoted_lines(body, solution) == [], f"{name}, {summary}: quotes the solution"
        pseudo = dict(tiers(nb.cells[i + 1].source))[TIERS[2]]
        blocks = re.findall(r"```\w*\n(.*?)```", pseudo, flags=re.S) or [pseudo]
        for block in blocks:
            with pytest.raises(SyntaxError):
                ast.parse(block)
