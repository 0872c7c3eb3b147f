"""The house rules: imports run one way (docs/DESIGN.md, "Rooms").

Every ``import`` of every module under ``vqzoo/`` is read with ``ast``, the
ones inside functions included, so a lazy import cannot hide a wrong-way
dependency or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vqzoo"

#: modules at the bottom of the house: they import nothing from vqzoo.
BOTTOM = {"io", "config"}
#: rooms each room must never import (besides the general rules below).
FORBIDDEN = {
    "quantize": {"nn", "losses", "tokenizers", "priors", "data", "metrics", "cli", "experiments", "checkpoint"},
    "nn": {"quantize", "losses", "tokenizers", "priors", "data", "metrics", "cli", "experiments", "checkpoint"},
    "losses": {"tokenizers", "priors", "data", "metrics", "cli", "experiments", "checkpoint"},
    "data": {"tokenizers", "priors", "cli", "experiments", "losses", "checkpoint"},
    "metrics": {"tokenizers", "priors", "cli", "experiments", "losses", "checkpoint"},
    "tokenizers": {"priors", "cli", "experiments"},
    "priors": {"cli", "experiments"},
    "checkpoint": {"cli", "experiments", "tokenizers", "priors"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vqzoo"


def imports_of(module: str) -> set[str]:
    """The vqzoo modules ``module`` imports, at module level or inside functions."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in MODULES else stem for alias in node.names]
        else:
            continue
        for name in names:
            if name == "vqzoo" or name.startswith("vqzoo."):
                # the deepest vqzoo module named (``import vqzoo.a.b`` imports vqzoo.a.b)
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name != module:
                    found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def third_party_imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_graph_sees_lazy_imports() -> None:
    # tokenizers/encode.py imports the loader inside encode_tokens
    assert "vqzoo.checkpoint" in GRAPH["vqzoo.tokenizers.encode"]
    assert "vqzoo.tokenizers.base" in GRAPH["vqzoo.tokenizers.encode"]


def test_no_import_cycles() -> None:
    # The top-level package re-exports public names; it is nobody's dependency in the graph.
    graph = {m: {d for d in deps if d != "vqzoo"} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module: str) -> None:
    r = room(module)
    for dep in GRAPH[module]:
        d = room(dep)
        if r == d:
            continue
        assert r not in BOTTOM, f"{module} is a bottom module but imports {dep}"
        assert d not in FORBIDDEN.get(r, set()), f"{module} ({r}/) must not import {dep} ({d}/)"
        # An experiment runner is an entry point too: it drives `vqzoo fit` from Python.
        if d == "cli" and r != "experiments":
            pytest.fail(f"{module} imports {dep}: only the entry points (cli/, experiments/) may import vqzoo.cli")
        if d == "convert" and r not in ("cli", "experiments"):
            pytest.fail(f"{module} imports {dep}: only the entry points use the converters")
        if d == "experiments" and r != "experiments":
            pytest.fail(f"{module} imports {dep}: the core never imports vqzoo.experiments")
        assert d != "vqzoo" or r in ("experiments", "cli"), f"{module} imports the top-level package; import the room's module"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) in {"quantize", "nn"} | BOTTOM))
def test_shared_core_is_plain_torch(module: str) -> None:
    """quantize/ and nn/ (and the bottom modules) can be dropped into any PyTorch code: no Lightning."""
    assert not third_party_imports(module) & {"lightning", "pytorch_lightning", "torchmetrics"}, module
