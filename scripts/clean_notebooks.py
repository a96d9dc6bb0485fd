"""Committed notebooks stay clean: no outputs, and the notebook metadata every course notebook shares.

Why: presenting a notebook live (RISE's ``Alt R``, or any JupyterLab save) rewrites its
``kernelspec`` and ``language_info`` (version, codemirror mode, file extension ...) and may
leave outputs; committed, that is a diff in a file nobody meant to change. Run it before
committing (``--check`` only tells, exit status 1; it suits a pre-commit hook):

    .venv/bin/python scripts/clean_notebooks.py [--check] [PATH ...]   # default: notebooks/, exercises/, solutions/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "exercises", "solutions")
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def committed_notebooks() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).glob("*.ipynb"))


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What a live session left in ``nb``: changed notebook metadata, outputs, execution counts."""
    found = []
    if dict(nb.metadata) != METADATA:
        extra = sorted(set(nb.metadata) ^ set(METADATA)) or sorted(
            k for k in METADATA if nb.metadata.get(k) != METADATA[k]
        )
        found.append(f"notebook metadata differs: {', '.join(extra)}")
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    if ran:
        found.append(f"cells {ran} have outputs or execution counts")
    return found


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with the shared metadata and no outputs; cells, their ids and their own metadata are kept."""
    nb.metadata = nbformat.from_dict(METADATA)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="*", help="notebooks (default: every committed one)")
    parser.add_argument("--check", action="store_true", help="only say what is dirty; exit 1 if anything is")
    args = parser.parse_args(argv)
    dirty = 0
    for path in args.paths or committed_notebooks():
        nb = nbformat.read(path, as_version=4)
        found = problems(nb)
        if not found:
            continue
        dirty += 1
        print(f"{path}: {'; '.join(found)}" + ("" if args.check else " (cleaned)"))
        if not args.check:
            nbformat.write(clean(nb), path)
    return 1 if dirty and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
