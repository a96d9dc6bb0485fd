"""Build the Chinese notebooks: the English notebook's code cells, byte for byte, with Chinese prose.

The prose lives in one Markdown file per notebook, ``<folder>/zh/<stem>.md`` beside the
notebook it builds, keyed by cell id::

    <!-- cell: 1a2b3c4d | en: 5e6f7a8b -->
    中文的 Markdown……

``cell`` is the English markdown cell's id; ``en`` the first 8 hex digits of the SHA-256 of that English
cell's source when it was translated. When the English cell changes, its hash no longer matches and the
build names the stale cell, so the two languages cannot drift apart silently. Links are written as seen
from ``<folder>/zh/``, where both the text file and the notebook live, so they resolve from either (a sibling
course notebook by its bare name, ``../../docs/glossary_zh.md``, ...).

    python scripts/make_zh_notebooks.py                      # build every <folder>/zh/<stem>.ipynb that has text
    python scripts/make_zh_notebooks.py --check              # exit 1 if a built notebook is stale or missing
    python scripts/make_zh_notebooks.py --skeleton NB.ipynb  # start a text file: each cell's English as a draft
    python scripts/make_zh_notebooks.py --stale              # list the cells whose English changed

``--check`` also fails on a Chinese notebook or text file left behind by an English notebook that is gone.
The tests (``tests/test_zh_notebooks.py``) call :func:`check` on each notebook.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "exercises", "solutions")
HEADER = re.compile(r"^<!-- cell: (?P<id>[\w-]+) \| en: (?P<hash>[0-9a-f]{8}) -->$", re.MULTILINE)


class TextFileError(ValueError):
    """A Chinese text file that cannot be built: bad header, stale or missing cells, unknown ids."""


def english_hash(source: str) -> str:
    """The fingerprint a translation records of the English text it was written from."""
    return hashlib.sha256(source.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Section:
    cell_id: str
    en_hash: str
    text: str


def read_text(path: Path) -> list[Section]:
    """Split a text file into its sections; text before the first header is an error."""
    raw = path.read_text(encoding="utf-8")
    heads = list(HEADER.finditer(raw))
    if not heads or raw[: heads[0].start()].strip():
        raise TextFileError(f"{shown(path)}: must start with a '<!-- cell: ID | en: HASH -->' header")
    ends = [h.start() for h in heads[1:]] + [len(raw)]
    return [Section(h["id"], h["hash"], raw[h.end() : end].strip("\n")) for h, end in zip(heads, ends)]


def shown(path: Path) -> str:
    """A path as a message names it: relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def text_path(english: Path) -> Path:
    return english.parent / "zh" / f"{english.stem}.md"


def built_path(english: Path) -> Path:
    return english.parent / "zh" / english.name


def problems(english: Path, sections: list[Section]) -> list[str]:
    """Everything that keeps the Chinese notebook from matching its English one, one line each."""
    nb = nbformat.read(english, as_version=4)
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    out = [f"markdown cell {i} of {english.name} has no id: give it one (nbformat 4.5)"
           for i, c in enumerate(markdown) if not c.get("id")]  # fmt: skip
    cells = {c.id: c for c in markdown if c.get("id")}
    seen: dict[str, Section] = {}
    for s in sections:
        if s.cell_id in seen:
            out.append(f"cell {s.cell_id}: translated twice")
        seen[s.cell_id] = s
        if s.cell_id not in cells:
            out.append(f"cell {s.cell_id}: no markdown cell with this id in {english.name}")
        elif english_hash(cells[s.cell_id].source) != s.en_hash:
            out.append(
                f"cell {s.cell_id}: the English changed since it was translated (en: "
                f"{s.en_hash}, now {english_hash(cells[s.cell_id].source)})"
            )
        if not s.text.strip():
            out.append(f"cell {s.cell_id}: empty translation")
    out += [f"cell {cid}: no Chinese text" for cid in cells if cid not in seen]
    return out


def build(english: Path) -> nbformat.NotebookNode:
    """The Chinese notebook: the English one with each markdown cell's source replaced, outputs stripped."""
    sections = read_text(text_path(english))
    bad = problems(english, sections)
    if bad:
        raise TextFileError(f"{shown(text_path(english))}:\n  " + "\n  ".join(bad))
    text = {s.cell_id: s.text for s in sections}
    nb = copy.deepcopy(nbformat.read(english, as_version=4))
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = text[cell.id]
        elif cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata["language_info"] = nb.metadata.get("language_info", {"name": "python"})
    nb.metadata["cblab_teach"] = {"lang": "zh", "english": f"../{english.name}"}
    return nb


def skeleton(english: Path) -> str:
    """A text file to translate in place: every markdown cell's header and its English source."""
    nb = nbformat.read(english, as_version=4)
    parts = [
        f"<!-- cell: {c.id} | en: {english_hash(c.source)} -->\n{c.source}\n"
        for c in nb.cells
        if c.cell_type == "markdown"
    ]
    return "\n".join(parts)


def translated(root: Path | None = None) -> list[Path]:
    """The English notebooks under ``root`` (default: the repository) that have a Chinese text file."""
    root = root or REPO
    return sorted(p for f in FOLDERS for p in (root / f).glob("*.ipynb") if text_path(p).exists())


def built_text(english: Path) -> str:
    """The Chinese notebook's file contents, exactly as the build writes them."""
    return nbformat.writes(build(english)) + "\n"


def check(english: Path) -> str | None:
    """Why ``<folder>/zh/<name>`` is not what its sources build (stale, missing, or unbuildable); None if current."""
    target = built_path(english)
    try:
        text = built_text(english)
    except TextFileError as err:
        return str(err)
    if not target.exists():
        return f"{shown(target)}: missing; run python scripts/make_zh_notebooks.py"
    if target.read_text(encoding="utf-8") != text:
        return f"{shown(target)}: out of date; run python scripts/make_zh_notebooks.py"
    return None


def orphans(root: Path | None = None) -> list[str]:
    """Chinese notebooks and text files whose English notebook is gone (or built notebooks with no text)."""
    root = root or REPO
    out = []
    for folder in FOLDERS:
        zh = root / folder / "zh"
        for md in sorted(zh.glob("*.md")):
            if md.name != "README.md" and not (root / folder / f"{md.stem}.ipynb").exists():
                out.append(f"{shown(md)}: no English notebook {folder}/{md.stem}.ipynb")
        for nb in sorted(zh.glob("*.ipynb")):
            if not text_path(root / folder / nb.name).exists():
                out.append(f"{shown(nb)}: no text file {folder}/zh/{nb.stem}.md to build it from")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a built notebook differs from its sources")
    ap.add_argument("--stale", action="store_true", help="list problems without building")
    ap.add_argument("--skeleton", type=Path, help="write the text file of this English notebook (never overwrites)")
    args = ap.parse_args(argv)
    if args.skeleton:
        out = text_path(args.skeleton.resolve())
        if out.exists():
            sys.exit(f"{out} exists; edit it, or delete it first")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(skeleton(args.skeleton.resolve()), encoding="utf-8")
        print(f"wrote {out.relative_to(REPO)}")
        return 0
    failed = False
    for english in translated():
        rel = shown(built_path(english))
        if args.stale:
            try:
                lines = problems(english, read_text(text_path(english)))
            except TextFileError as err:
                lines = [str(err)]
            for line in lines:
                print(f"{rel}: {line}")
                failed = True
            continue
        if args.check:
            reason = check(english)
            if reason:
                print(reason)
                failed = True
            continue
        try:
            text = built_text(english)
        except TextFileError as err:
            print(err)
            failed = True
            continue
        built_path(english).write_text(text, encoding="utf-8")
        print(f"wrote {rel}")
    if args.check or args.stale:
        for line in orphans():
            print(line)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
