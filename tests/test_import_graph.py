"""The import graph of mcvae's own packages, read from the modules' import statements (``ast``;
nothing is imported): no circles, and dependencies one way, service -> workers -> models.

What counts as an edge ``a -> b`` (a and b modules of models, workers, service, mcvae_cli):
- every ``import``/``from ... import`` in a's source: at module level and inside functions
  and classes alike. A function-level import that closes a circle is still a circle: it only
  moves the failure from import time to call time, and hides the structure from the reader.
  Imports under ``if TYPE_CHECKING:`` are left out: they never run.
- relative imports resolved against a's package; ``from pkg import name`` goes to the module
  ``pkg.name`` when there is one, else to ``pkg`` (its ``__init__``); a name a package loads on
  first use (the ``_EXPORTS`` table of ``models`` and ``models.data``) goes to the module the
  table names, since that is what the import loads.
- importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; those implicit edges are
  left out (every module would otherwise form a circle with its own package).

"Import time" (for the torch rule) is everything outside function bodies: module level, class
bodies, ``if``/``try`` blocks at module level.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "workers", "service", "mcvae_cli")
# What may import what, by top-level package (the CLI sits on top and calls into all three).
MAY_IMPORT = {
    "mcvae_cli": {"mcvae_cli", "service", "workers", "models"},
    "service": {"service", "workers", "models"},
    "workers": {"workers", "models"},
    "models": {"models"},
}
# Imports that load torch: the gateway must not reach any of them at import time.
TORCH = ("torch", "monai", "torchvision", "safetensors.torch")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a module of the project, or the name as imported for anything else
    line: int
    at_import: bool  # outside any function body

    def where(self) -> str:
        return f"{self.source.replace('.', '/')}.py:{self.line}"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's __init__)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _lazy_exports(tree: ast.Module, package: str) -> dict[str, str]:
    """A package's ``_EXPORTS = {"name": ".module", ...}`` table, as name -> absolute module."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "_EXPORTS"):
            table = ast.literal_eval(node.value)
            return {name: package + module if module.startswith(".") else module
                    for name, module in table.items()}
    return {}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(import node, at import time) for every import that can run."""
    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    yield from walk_one(other, in_function)
                continue
            yield from walk_one(child, in_function)

    def walk_one(node: ast.AST, in_function: bool):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, not in_function
        yield from walk(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(tree, False)


def build_graph() -> tuple[set[str], list[Edge]]:
    modules = _modules()
    trees = {name: ast.parse(path.read_text(), filename=str(path)) for name, (path, _) in modules.items()}
    exports = {name: _lazy_exports(trees[name], name) for name, (_, is_package) in modules.items() if is_package}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for name, tree in trees.items():
        package = name if modules[name][1] else name.rpartition(".")[0]
        for node, at_import in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = []
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    if submodule in modules:
                        targets.append(submodule)
                    elif alias.name in exports.get(origin, {}):
                        targets.append(exports[origin][alias.name])
                    else:
                        targets.append(origin)
            for target in targets:
                ours = known(target) if target.split(".")[0] in PACKAGES else None
                if ours != name:
                    edges.append(Edge(name, ours or target, node.lineno, at_import))
    return set(modules), edges


def find_cycles(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """One circle per strongly connected component (Tarjan), as a path a -> ... -> a."""
    graph: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        if e.target in graph:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:  # a shortest way back to the component's first module
        members, start = set(component), component[0]
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            following = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        cycle = [*paths[v], start]
                        break
                    if w not in paths:
                        paths[w] = [*paths[v], w]
                        following.append(w)
                if cycle:
                    break
            frontier = following
        cycles.append(cycle)
    return cycles


def _describe(cycle: list[str], edges: list[Edge]) -> str:
    steps = []
    for a, b in pairwise(cycle):
        lines = sorted({e.where() for e in edges if e.source == a and e.target == b})
        steps.append(f"  {a} -> {b}  ({', '.join(lines)})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_the_graph_is_read_from_every_module():
    nodes, edges = build_graph()
    assert {"models.vae", "models.factory", "workers.app", "workers.queues", "service.app",
            "mcvae_cli.main"} <= nodes
    # Relative, absolute, function-level and lazily exported imports all resolve.
    found = {(e.source, e.target, e.at_import) for e in edges}
    assert ("workers.app", "workers.queues", True) in found
    assert ("service.readiness", "workers.queues", True) in found
    assert ("models.checkpoint", "models.factory", False) in found  # function-level
    assert ("workers.handlers", "models.factory", False) in found  # `from models import build_model`


def test_the_cycle_finder_names_a_circle():
    edges = [Edge("a", "b", 1, True), Edge("b", "c", 2, False), Edge("c", "a", 3, True), Edge("c", "d", 4, True)]
    cycles = find_cycles({"a", "b", "c", "d"}, edges)
    assert cycles == [["a", "b", "c", "a"]]
    assert "a -> b -> c -> a" in _describe(cycles[0], edges)


def test_no_import_circles():
    nodes, edges = build_graph()
    cycles = find_cycles(nodes, edges)
    assert not cycles, "import circles:\n" + "\n".join(_describe(c, edges) for c in cycles)


def test_dependencies_run_one_way_service_workers_models():
    _, edges = build_graph()
    wrong = [f"{e.where()}: {e.source} imports {e.target}" for e in edges
             if e.target.split(".")[0] in PACKAGES
             and e.target.split(".")[0] not in MAY_IMPORT[e.source.split(".")[0]]]
    assert not wrong, "imports against service -> workers -> models:\n" + "\n".join(wrong)


def test_the_gateway_reaches_no_torch_at_import_time():
    """What the gateway's modules import at import time, followed through the project's own
    modules, never includes torch (or MONAI, which loads it); the library is loaded inside
    the functions that need it. (tests/service/test_units.py checks the same by importing.)"""
    _, edges = build_graph()
    at_import: dict[str, list[Edge]] = {}
    for e in edges:
        if e.at_import:
            at_import.setdefault(e.source, []).append(e)
    seen: dict[str, list[str]] = {m: [m] for m in at_import if m.split(".")[0] == "service"}
    todo = list(seen)
    wrong = []
    while todo:
        module = todo.pop()
        for e in at_import.get(module, []):
            if e.target.startswith(TORCH) and e.target.split(".")[0] not in PACKAGES:
                wrong.append(" -> ".join(seen[module]) + f" imports {e.target} ({e.where()})")
            elif e.target.split(".")[0] in PACKAGES and e.target not in seen:
                seen[e.target] = [*seen[module], e.target]
                todo.append(e.target)
    assert not wrong, "the gateway imports torch at import time:\n" + "\n".join(sorted(wrong))
