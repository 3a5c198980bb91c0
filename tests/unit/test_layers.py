"""The layer contract: a module imports only from its own layer or the layers below it, and no
two modules import each other, directly or around a cycle. Every import counts, including
those inside functions and under TYPE_CHECKING. Layers, top to bottom, are in LAYERS; a module
belongs to the first layer whose prefix it starts with."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("system", "actors", "learner")
LAYERS = [
    ("entry points", ("system.cli", "system.commands", "system.chaos", "system.benchmarks")),
    ("orchestration", ("system.orchestration",)),
    ("reporting", ("system.reporting",)),
    ("learner", ("learner",)),
    ("actors", ("actors",)),
    ("data", ("system.data",)),
    ("transport", ("system.transport",)),
    ("config", ("system.config", "system")),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (an imported name that is a module counts as
    that module)."""
    files = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                deps |= (subs & files.keys()) or {node.module}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph.items()
        for d in deps
        if layer_of(d) < layer_of(m)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_reaches_up_a_layer():
    assert upward_imports(import_graph()) == []


def test_no_module_cycle():
    assert cycles(import_graph()) == []


def test_the_contract_can_fail():
    graph = {"system.transport.queue": {"system.orchestration.driver"}}
    assert upward_imports(graph) == [
        "system.transport.queue (transport) imports system.orchestration.driver (orchestration)"
    ]
    assert cycles({"actors.x": {"actors.y"}, "actors.y": {"actors.x"}}) == [
        ["actors.x", "actors.y"]
    ]
