"""``make slides`` without running a kernel: stalls are retried, and the index covers every deck.

The executing process is replaced by a stand-in (``build_site.execute_isolated``) that stalls
or returns a small executed notebook, so each test runs in about a second; the real execution
is what ``tests/browser/test_slides.py`` builds.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_slides", REPO / "scripts" / "build_slides.py")
slides = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slides)

STALL = "stalled: stopped after {limit} s while running cell 2/5 (index 3): import ipywidgets as widgets"


def lesson(path: Path, title: str) -> Path:
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nOne idea."), nbformat.v4.new_markdown_cell("## Recap")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


class Executor:
    """Stands in for ``execute_isolated``: stalls ``stalls[stem]`` times, then returns the notebook as it is."""

    def __init__(self, stalls: dict[str, int] | None = None, errors: dict[str, str] | None = None) -> None:
        self.stalls, self.errors = dict(stalls or {}), errors or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, path: Path, timeout: int, notebook_timeout: int):
        self.calls.append((path.stem, notebook_timeout))
        if path.stem in self.errors:
            return None, f"execution failed while running cell 1/1: {self.errors[path.stem]}"
        if self.stalls.get(path.stem, 0) > 0:
            self.stalls[path.stem] -= 1
            return None, STALL.format(limit=notebook_timeout) + "\nlog tail:\n..."
        return nbformat.read(path, as_version=4), ""


@pytest.fixture
def course(tmp_path, monkeypatch):
    """Three course notebooks in a folder of their own, and a stand-in executor to configure."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stem, title in [("01_one", "01 · One"), ("02_two", "02 · Two"), ("03_three", "03 · Three")]:
        lesson(notebooks / f"{stem}.ipynb", title)
    monkeypatch.setattr(slides, "NOTEBOOKS", notebooks)
    executor = Executor()
    monkeypatch.setattr(slides.sibling("build_site"), "execute_isolated", executor)
    return tmp_path, executor


def index_links(out: Path) -> list[str]:
    return re.findall(r'<li><a href="([^"]+)\.html">', (out / "index.html").read_text(encoding="utf-8"))


def test_a_stalled_notebook_is_run_again_in_a_fresh_kernel_under_a_shorter_limit(course) -> None:
    folder, executor = course
    executor.stalls = {"02_two": 1}
    out = folder / "slides"
    assert slides.main(["--out", str(out), "--notebook-timeout", "240"]) == 0
    assert [c for c in executor.calls if c[0] == "02_two"] == [("02_two", 240), ("02_two", 120)]
    assert [c for c in executor.calls if c[0] != "02_two"] == [("01_one", 240), ("03_three", 240)]
    assert index_links(out) == ["01_one", "02_two", "03_three"]
    assert 'id="missing"' not in (out / "index.html").read_text(encoding="utf-8")


def test_a_notebook_that_always_stalls_is_named_in_the_index(course, capsys) -> None:
    folder, executor = course
    executor.stalls = {"02_two": 99}
    out = folder / "slides"
    assert slides.main(["--out", str(out), "--retry-timeout", "30"]) == 1
    assert [c for c in executor.calls if c[0] == "02_two"] == [("02_two", 240), ("02_two", 30), ("02_two", 30)]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert index_links(out) == ["01_one", "03_three"]
    missing = re.search(r'<li id="missing-02_two">(.*?)</li>', page, re.S)
    assert missing, "the index does not say that deck 02 is missing"
    assert "stalled in all 3 runs" in missing.group(1) and "--only 02" in missing.group(1)
    assert "02_two" in capsys.readouterr().err


def test_an_error_is_not_retried(course) -> None:
    folder, executor = course
    executor.errors = {"03_three": "NameError: name 'x' is not defined"}
    assert slides.main(["--out", str(folder / "slides")]) == 1
    assert [c for c in executor.calls if c[0] == "03_three"] == [("03_three", 240)]
    assert "NameError" in (folder / "slides" / "index.html").read_text(encoding="utf-8")


def test_only_keeps_every_deck_on_disk_in_the_index(course) -> None:
    folder, executor = course
    out = folder / "site" / "slides"
    assert slides.main(["--out", str(out)]) == 0
    (folder / "site" / "index.html").write_text(slides.sibling("build_site").index_page([]), encoding="utf-8")
    slides.sibling("build_site").publish_teaching(folder / "site")  # make site's index, with its slides entry
    executor.calls.clear()

    assert slides.main(["--out", str(out), "--only", "02"]) == 0
    assert executor.calls == [("02_two", 240)], "--only built more than deck 02"
    assert index_links(out) == ["01_one", "02_two", "03_three"]
    page = (out / "index.html").read_text(encoding="utf-8")
    for title in ("01 · One", "02 · Two", "03 · Three"):
        assert f"{title}</a> (2 slides)" in page
    site = (folder / "site" / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'href="slides/(\d\d)_\w+\.html"', site) == ["01", "02", "03"]
    assert 'href="slides/index.html"' in site

    (out / "01_one.html").unlink()  # a deck gone from disk: no link, and the index says it is missing
    assert slides.main(["--out", str(out), "--only", "03"]) == 0
    assert index_links(out) == ["02_two", "03_three"]
    assert re.search(r'<li id="missing-01_one">.*not built yet.*--only 01', (out / "index.html").read_text())


def test_decks_built_before_the_manifest_keep_their_titles(course) -> None:
    folder, _ = course
    out = folder / "slides"
    assert slides.main(["--out", str(out)]) == 0
    (out / slides.MANIFEST).unlink()
    assert slides.main(["--out", str(out), "--only", "01"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "01 · One</a> (2 slides)" in page and "03 · Three</a></li>" in page


def test_retry_limits() -> None:
    assert slides.retry_limits(240) == [240, 120, 120]
    assert slides.retry_limits(90) == [90, 60, 60]
    assert slides.retry_limits(40) == [40, 40, 40]  # never longer than the first run
    assert slides.retry_limits(240, 45, 1) == [240, 45]


@pytest.mark.slow
def test_a_real_stall_is_stopped_and_the_rerun_builds_the_deck(tmp_path) -> None:
    """Through the real executing process and kernel: the first run waits past its limit (as the nbclient stall
    does) and is stopped; the rerun, in a fresh kernel under the shorter limit, builds the deck."""
    marker = tmp_path / "ran-once"
    notebook = tmp_path / "99_stalls_once.ipynb"
    stall = f"import pathlib, time\nmarker = pathlib.Path({str(marker)!r})\nif not marker.exists():\n"
    stall += "    marker.touch()\n    time.sleep(600)  # the first run never finishes"
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# 99 · Stalls once"), nbformat.v4.new_code_cell(stall)]
    )
    nbformat.write(nb, notebook)
    out = tmp_path / "slides"
    args = ["--notebook", str(notebook), "--out", str(out), "--notebook-timeout", "25", "--retry-timeout", "60"]
    assert slides.main(args) == 0
    assert marker.exists() and (out / "99_stalls_once.html").exists()
    assert index_links(out) == ["99_stalls_once"]
