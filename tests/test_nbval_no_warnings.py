"""The nbval plugin that fails a notebook cell printing a warning: a clean cell passes, a warning fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]


def test_a_cell_that_warns_fails_and_a_clean_one_passes(tmp_path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print('quiet')"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('Out of range float values')"),
    ]
    path = tmp_path / "warns.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.nbval_no_warnings",
         "--nbval-lax", "--nbval-current-env", "--rootdir", str(tmp_path), str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 failed, 1 passed" in out and "UserWarning: Out of range float values" in out, out
