"""A pytest plugin for the nbval runs: a notebook cell that prints a warning fails.

A learner sees every warning under the cell that caused it (for example a widget's
``Message serialization failed``); the course should show none. nbval already fails a cell
that raises; this fails one whose stderr holds ``SomethingWarning:``. Load it with
``-p tests.nbval_no_warnings`` (``make test`` does).
"""

from __future__ import annotations

import re

import pytest

WARNING = re.compile(r"\b[A-Z]\w*Warning\b:?")


def warnings_in(outputs: list) -> list[str]:
    """Text of every stderr stream output that names a warning."""
    return [
        out.get("text", "")
        for out in outputs or []
        if out.get("output_type") == "stream" and out.get("name") == "stderr" and WARNING.search(out.get("text", ""))
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    found = warnings_in(getattr(item, "test_outputs", None) or [])
    if found:
        raise AssertionError(f"{item.nodeid}: the cell printed a warning:\n" + "\n".join(t[:1500] for t in found))
    return result
