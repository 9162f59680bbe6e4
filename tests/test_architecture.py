"""The package's shape, held: no import cycles, no module over 300 lines, Padim under 200 and the only writer of its state.

The layers themselves are import-linter contracts in pyproject.toml (``lint-imports``, run by
``.ci/run``); these checks cover what a contract cannot say.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import grimp

import padim

PACKAGE = Path(padim.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long


def test_padim_is_under_200_lines():
    from padim.model.padim import Padim

    assert len(inspect.getsourcelines(Padim)[0]) <= 200


def test_no_import_cycles_counting_every_import():
    """Tarjan's strongly connected components over grimp's graph, which counts imports inside functions too."""
    graph = grimp.build_graph("padim", include_external_packages=False)
    modules = sorted(graph.modules)
    index, low, on, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_only_padim_writes_fitted_attributes():
    """Fitted state (names ending in ``_``) is assigned in padim/model/padim.py alone (setattr included)."""
    owner = PACKAGE / "model" / "padim.py"
    found = []
    for path in MODULES:
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign | ast.AugAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr.endswith("_") and not target.attr.startswith("__"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{target.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} setattr")
            if isinstance(node, ast.Attribute) and node.attr == "__dict__":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} __dict__")
    assert not found, found
