"""The package's layers, read from the source: no import circles, and the core imports nothing above it.

Every ``import`` of a ``cblab_teach`` module counts, at module level or inside a function (a function-level
import hides a circle, it does not remove it); only imports under ``if TYPE_CHECKING:`` are left out, since
they never run. ``from package import name`` points at the submodule when ``name`` is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cblab_teach"
# what a layer may import from the package, besides itself
# (model/ and attention/ are the math: they read the core's RaggedBatch and KVCache types, nothing else of it)
BELOW = {
    "errors": set(),
    "core": {"errors", "model", "attention"},
    "model": {"errors", "attention", "core"},
    "attention": {"errors", "core"},
    "real": {"errors", "core", "model", "attention"},  # real models build on the engine, never on views or checks
    # the HTTP server: one engine through its public API, text through real/ (and the tiny model of demo_model.py)
    "serve": {"errors", "core", "model", "attention", "real", "demo_model"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST):
    """Import nodes that run: everything but the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _runtime_imports(child))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def imports_of(name: str) -> set[str]:
    """The ``cblab_teach`` modules that module ``name`` imports when it runs."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        out |= {t for t in targets if t in MODULES and t != name}
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_itself_back_through_a_circle():
    cycle = find_cycle({n: {t for t in ts if not n.startswith(t + ".") and t != "cblab_teach"} for n, ts in GRAPH.items()})
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("lower", sorted(BELOW))
def test_a_lower_layer_imports_nothing_above_it(lower):
    upward = {
        (name, target)
        for name, targets in GRAPH.items()
        if layer(name) == lower
        for target in targets
        if layer(target) not in BELOW[lower] | {lower}
    }
    assert not upward, f"{lower}/ imports upward: {sorted(upward)}"


def test_the_walker_sees_function_level_imports_and_circles():
    """The checks above can fail: a function-level upward import and a two-module circle are both found."""
    src = "def f():\n    from ..advanced import lora\n"
    tree = ast.parse(src)
    assert [type(n).__name__ for n in _runtime_imports(tree)] == ["ImportFrom"]
    hidden = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .engine import Engine\n")
    assert [n.module for n in _runtime_imports(hidden)] == ["typing"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "cblab_teach.core.engine" in GRAPH["cblab_teach.core"]  # from .engine import Engine
    assert "cblab_teach.core.kv_cache" in GRAPH["cblab_teach.core.engine"] or "cblab_teach.core.parts" in GRAPH[
        "cblab_teach.core.engine"
    ]
