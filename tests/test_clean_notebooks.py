"""A live presentation must not dirty the checkout: scripts/clean_notebooks.py finds and undoes what it leaves."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("clean_notebooks", REPO / "scripts" / "clean_notebooks.py")
cleaner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cleaner)

# What a JupyterLab save during a RISE presentation wrote into notebook 03.
RISE_SAVE = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": "3.12.3",
    },
    "rise": {"autolaunch": False},
}


@pytest.mark.parametrize("path", cleaner.committed_notebooks(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_notebooks_are_clean(path: Path) -> None:
    assert cleaner.problems(nbformat.read(path, as_version=4)) == [], "run scripts/clean_notebooks.py"


def test_a_presented_notebook_is_found_and_cleaned_back_to_its_committed_bytes(tmp_path: Path) -> None:
    original = REPO / "notebooks" / "03_token_budget_scheduler.ipynb"
    path = tmp_path / original.name
    shutil.copy(original, path)
    assert cleaner.main(["--check", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    nb.metadata = nbformat.from_dict(RISE_SAVE)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count, code.outputs = 1, [nbformat.v4.new_output("stream", text="hello\n")]
    nbformat.write(nb, path)

    found = cleaner.problems(nbformat.read(path, as_version=4))
    assert any("metadata" in p for p in found) and any("outputs" in p for p in found), found
    assert cleaner.main(["--check", str(path)]) == 1
    assert path.read_bytes() != original.read_bytes(), "--check changed nothing"
    assert cleaner.main([str(path)]) == 0
    assert path.read_bytes() == original.read_bytes()
    assert cleaner.main(["--check", str(path)]) == 0
