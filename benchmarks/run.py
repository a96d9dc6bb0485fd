"""Run every ``benchmarks/bench_*.py`` and write JSON results plus one offline HTML report.

::

    python -m benchmarks.run            # full sizes (make bench)
    python -m benchmarks.run --quick    # tiny sizes, to keep the code working (CI)
    python -m benchmarks.run --only continuous_vs_static
    python -m benchmarks.run --only swap  # swap vs recompute of a preempted request, by length
    python -m benchmarks.run --only step_time  # the step-time model against this CPU's measured steps
    python -m benchmarks.run --only soak  # 3 minutes of HTTP load on the server, disconnects and bad requests mixed in
    python -m benchmarks.run --only http  # the load generator against the server vs the engine in-process

Each module exposes ``run(quick: bool = False) -> dict`` with keys ``name``,
``metrics`` (flat numbers), ``figures`` (plotly figures) and ``table`` (row dicts).
A benchmark that raises is reported as failed; the others still run. The ``LONG`` ones (minutes against a live
server) run in a full run and with ``--only``, but are left out of :func:`discover`'s default list, which the
quick-mode test suite (``tests/test_benchmarks_quick.py``, part of ``make test``) runs.
"""

from __future__ import annotations

import argparse
import html
import importlib
import json
import math
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .common import environment

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


LONG = ("http", "soak", "step_time")  # servers under minutes of load; step_time times this CPU: never in make test


def discover(include_long: bool = False) -> list[str]:
    """Names of every ``bench_<name>.py`` next to this file, sorted; the ``LONG`` ones only if asked for."""
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return names if include_long else [n for n in names if n not in LONG]


def run_one(name: str, quick: bool) -> dict:
    """Import and run one benchmark; an exception becomes an ``error`` entry instead of a crash."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        result = dict(module.run(quick=quick))
        result.setdefault("name", name)
        result.setdefault("metrics", {})
        result.setdefault("figures", [])
        result.setdefault("table", [])
        result["error"] = None
    except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
        result = {"name": name, "metrics": {}, "figures": [], "table": [], "error": f"{type(e).__name__}: {e}"}
        result["traceback"] = traceback.format_exc()
    result["seconds"] = time.perf_counter() - start
    return result


def _plain(value):
    """JSON-safe numbers: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(result: dict, command: str, quick: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result['name']}.json"
    payload = {k: v for k, v in result.items() if k != "figures"}
    payload.update(command=command, quick=quick, environment=environment())
    path.write_text(json.dumps(_plain(payload), indent=2) + "\n")
    return path


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics_html(metrics: dict) -> str:
    rows = [{"metric": k, "value": v} for k, v in metrics.items()]
    return f"<details><summary>all metrics ({len(rows)})</summary>{_table_html(rows)}</details>" if rows else ""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; }
.error { color: #a00; } section { margin-bottom: 3em; }
"""


def write_report(results: list[dict], command: str, quick: bool) -> Path:
    """One self-contained HTML file: plotly is embedded once, so it opens offline."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cblab_teach benchmarks</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>cblab_teach benchmarks</h1>",
        f"<p>Command: <code>{html.escape(command)}</code>{' (quick mode)' if quick else ''}</p>",
        f"<p>Environment: <code>{html.escape(json.dumps(env))}</code></p>",
    ]
    plotly_included = False
    for result in results:
        parts.append(f"<section><h2>{html.escape(result['name'])}</h2>")
        parts.append(f"<p>{result['seconds']:.1f} s; reproduce with <code>{html.escape(command)}</code></p>")
        if result.get("error"):
            parts.append(f"<p class='error'>FAILED: {html.escape(result['error'])}</p>")
            parts.append(f"<pre>{html.escape(result.get('traceback', ''))}</pre>")
        parts.append(_table_html(result["table"]))
        for fig in result["figures"]:
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if not plotly_included else False))
            plotly_included = True
        parts.append(_metrics_html(result["metrics"]))
        parts.append("</section>")
    parts.append("</body></html>")
    path = RESULTS / "report.html"
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code runs, not the speed")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine more threads make timings erratic)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = discover(include_long=True)
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {names}")
        names = [n for n in names if n in args.only]
    command = "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = []
    bar = tqdm(names, desc="benchmarks", unit="bench")
    for name in bar:
        bar.set_postfix_str(name)
        result = run_one(name, args.quick)
        results.append(result)
        write_json(result, command.strip(), args.quick)
        status = f"FAILED ({result['error']})" if result["error"] else "ok"
        tqdm.write(f"{name}: {status} in {result['seconds']:.1f} s")
    report = write_report(results, command.strip(), args.quick)
    print(f"wrote {RESULTS}/*.json and {report}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
