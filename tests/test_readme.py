"""The README works as written: each Python snippet runs on its own, and its quick shell commands succeed.

A learner copies a snippet into a fresh interpreter, or types a command after activating
``.venv`` as the README says; both must work from a fresh clone once ``make lab`` or
``make test`` has installed the course.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", flags=re.S | re.M)
# Shell lines the test does not run, each with the reason; every other line of a ```bash block runs.
NOT_RUN = {
    r"^make (lab|test|bench|chat|serve)\b": "long or interactive: the suite itself, JupyterLab, a terminal chat, a server",
    r"^make load\b": "needs the server make serve starts (tests/test_loadgen.py runs the load generator against one)",
    r"^curl\b": "talks to the server make serve starts (tests/test_serve.py drives the same endpoints)",
    r"^python3 -m venv\b|pip install": "installation: make does it, and the suite runs inside it",
    r"^conda\b": "conda is not part of the suite's environment",
}


def blocks(language: str) -> list[str]:
    """The README's fenced blocks in ``language``, dedented (a block inside a list item is indented)."""
    out = []
    for indent, lang, body in FENCE.findall(README.read_text(encoding="utf-8")):
        if lang == language:
            out.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return out


def shell_commands() -> list[str]:
    """Every command line of the ```bash blocks, comments dropped, in order."""
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def python_snippets() -> list[str]:
    return blocks("python")


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_each_python_snippet_runs_alone(index: int, capsys) -> None:
    """A fresh namespace per snippet: none may lean on a name another one defined."""
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(python_snippets()[index], f"{README.name} python block {index + 1}", "exec"), namespace)
    engine = namespace.get("engine")
    assert engine is not None, "every snippet builds an engine"
    assert not engine.has_unfinished(), "the snippet left requests unfinished"
    assert all(engine.output(rid) for rid in engine.requests), "a request produced no tokens"


def test_beyond_the_core_snippet_exercises_its_features(capsys) -> None:
    """The advanced snippet: every request finishes with its 8 tokens and the printed summary is the readable one."""
    snippet = next(s for s in python_snippets() if "enable_prefix_caching=True" in s)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(snippet, "README beyond the core", "exec"), namespace)
    engine, metrics = namespace["engine"], namespace["metrics"]
    assert [len(engine.output(rid)) for rid in engine.requests] == [8, 8]
    # the second request reuses the shared prompt's two full blocks of 16 (and recomputes nothing else of it)
    assert engine.stats.prefix_hit_tokens == 32
    assert engine.records[1].plan.cached_tokens == {1: 32}
    printed = capsys.readouterr().out
    assert f"{len(engine.requests)} requests, {len(engine.records)} steps" in printed, printed
    assert "EngineStats:" in printed and "{" not in printed, f"the README prints raw dicts: {printed}"
    assert metrics.summary()["requests"] == 2


def test_shell_commands_run_as_written_after_activation(tmp_path) -> None:
    """Run the README's quick commands in one bash, in the repository, as a learner types them."""
    commands = [c for c in shell_commands() if not any(re.search(p, c) for p in NOT_RUN)]
    assert any(c.startswith("source .venv/bin/activate") for c in commands), "the README never says to activate"
    assert any("python -m cblab_teach demo" in c for c in commands), "the terminal demo is not among the commands"
    venv = Path(sys.prefix)
    if not (REPO / ".venv").exists():
        pytest.skip(f"no .venv in {REPO}: the README's commands assume make created it (this run uses {venv})")
    script = "set -e\n" + "\n".join(f"echo '>>> {c}'\n{c}" for c in commands)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # a fresh terminal: no python of ours on the path
    run = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"a README command failed:\n{out[-4000:]}"
    for c in commands:
        assert f">>> {c}" in run.stdout, f"{c!r} did not run"
    assert re.search(r"^\s*\d+ steps; outputs:", run.stdout, flags=re.M), "the demo printed no step table"
    assert "ex04_paged_allocator: PASSED" in run.stdout, "the solution check did not pass"


def test_every_shell_line_is_run_or_skipped_for_a_reason() -> None:
    """A new command in the README is run by the test above unless it matches a listed reason."""
    commands = shell_commands()
    skipped = [c for c in commands if any(re.search(p, c) for p in NOT_RUN)]
    assert set(commands) - set(skipped), "nothing left to run"
    assert all(c.startswith(("make", "python3 -m venv", "conda", "curl")) for c in skipped), skipped


def test_serving_snippet_shares_the_prompt_and_copies_on_write() -> None:
    """The serving snippet: 4 samples, 3 copies of the part-filled block, each sample equal to its request alone."""
    import dataclasses

    from cblab_teach import Engine, EngineConfig

    snippet = next(s for s in python_snippets() if "add_request_group" in s)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(snippet, "README serving", "exec"), namespace)
    engine, ids, model = namespace["engine"], namespace["ids"], namespace["model"]
    assert engine.stats.cow_copies == 3 and len(ids) == 4
    sampling = engine.request(ids[0]).sampling
    for i, rid in enumerate(ids):
        own = dataclasses.replace(sampling, seed=sampling.seed + i)
        assert engine.output(rid) == Engine(model, EngineConfig()).generate([[5, 6, 7, 8, 9, 10]], 8, [own])[0]
