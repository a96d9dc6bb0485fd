"""Measure how long each course notebook takes to run top to bottom, and write the table into docs/teaching.md.

Why measured: a lesson plan that guesses run times is wrong in front of a room.
Each notebook runs in a fresh kernel (as "Restart and run all" does, kernel start
included); the table goes between the two marker comments in docs/teaching.md,
with the machine's CPU, core count and load average, so a reader can tell a quiet
laptop's numbers from a busy server's. ``--repeat N`` keeps each notebook's fastest run.

    .venv/bin/python scripts/time_notebooks.py [--only 03] [--repeat 1] [--print-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DOC = ROOT / "docs" / "teaching.md"
START = "<!-- run-times:start (written by scripts/time_notebooks.py) -->"
END = "<!-- run-times:end -->"
COURSE_PATTERN = re.compile(r"^\d\d_.*\.ipynb$")


def course_notebooks(only: str | None = None) -> list[Path]:
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if COURSE_PATTERN.match(p.name))
    return [p for p in paths if not only or p.name.startswith(only) or only in p.stem]


def run_seconds(path: Path, timeout: int) -> float:
    """Wall-clock seconds of one run in a fresh kernel, kernel start included."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    return time.perf_counter() - started


def run_isolated(path: Path, timeout: int, notebook_timeout: int, tries: int = 2) -> float:
    """:func:`run_seconds` in a process of its own, stopped after ``notebook_timeout`` seconds and tried again.

    Why: now and then nbclient waits forever on a cell the kernel has finished (the kernel idle, its reply never
    read): here always a cell that builds widgets (notebook 02's ``widgets.interact``, notebook 18's quiz), as
    nbclient's open issue #312 reports for widget cells. A stall is rare and a second run goes through, so a
    stalled notebook is stopped and run again instead of hanging the table."""
    for attempt in range(1, tries + 1):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-one", str(path), "--timeout", str(timeout)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=notebook_timeout, check=True)
            return float(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            print(f"{path.name}: stalled after {notebook_timeout} s (try {attempt} of {tries})", flush=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError((err.stderr or err.stdout or "").strip().splitlines()[-1][:200]) from None
    raise RuntimeError(f"stalled {tries} times")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(rows: list[tuple[str, float | None]], load_before: float, load_after: float) -> str:
    busy = max(load_before, load_after) > 0.5 * (os.cpu_count() or 1)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {load_before:.1f} before and {load_after:.1f} after"
        + (" (a busy machine: a quiet laptop runs faster)." if busy else "."),
        "",
        "| notebook | run all (s) |",
        "| --- | ---: |",
    ]
    for name, seconds in rows:
        lines.append(f"| `{name}` | {'failed' if seconds is None else f'{seconds:.0f}'} |")
    total = sum(s for _, s in rows if s is not None)
    lines.append(f"| **all of them** | **{total:.0f}** |")
    return "\n".join(lines)


def write_into(doc: Path, text: str) -> None:
    page = doc.read_text(encoding="utf-8")
    if START not in page or END not in page:
        raise SystemExit(f"{doc} lacks the markers {START!r} ... {END!r}")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="notebooks whose name starts with (or contains) this")
    parser.add_argument("--repeat", type=int, default=1, help="runs per notebook; the fastest counts")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--notebook-timeout", type=int, default=300, help="seconds per notebook before a retry")
    parser.add_argument("--print-only", action="store_true", help="print the table, leave docs/teaching.md alone")
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)  # the child process: time one notebook
    args = parser.parse_args(argv)
    if args.run_one:
        print(run_seconds(args.run_one, args.timeout))
        return 0
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, float | None]] = []
    for path in course_notebooks(args.only):
        runs = []
        for _ in range(max(1, args.repeat)):
            try:
                runs.append(run_isolated(path, args.timeout, args.notebook_timeout))
            except Exception as err:  # a failing notebook is a row that says so; the others are still timed
                print(f"{path.name}: failed: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}")
                break
        rows.append((path.stem, min(runs) if runs else None))
        print(f"{path.stem:<36} {'failed' if not runs else f'{min(runs):6.1f} s'}", flush=True)
    text = table(rows, load_before, os.getloadavg()[0])
    print(text)
    if not args.print_only:
        write_into(DOC, text)
        print(f"wrote the table into {DOC}")
    return 0 if all(s is not None for _, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
