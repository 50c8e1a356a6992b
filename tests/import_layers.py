"""The import graph of a package read from its source (AST), and the layer rules checked against it.

A unit is one folder or one top-level module of a layer: `vlablocks.core.vlm`, `vlablocks.core.config`,
`vlablocks.methods.rl`, ... Every `import` and `from ... import` is read, those inside functions included; relative
imports are resolved against the importing module. Two rules:
  1. layers import downwards only: LAYERS lists them from the bottom; a unit may import its own layer or a lower one;
  2. no cycle between units (a strongly connected component of more than one unit is a cycle).
Packages outside the project that sit below every layer (the client) are named in `below` and may import nothing of
the project.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

LAYERS = ("core", "methods", "tools", "cli")


@dataclass(frozen=True)
class Edge:
    source: str  # importing unit
    target: str  # imported unit
    where: str  # file:line of the import


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name` may import a submodule `pkg.name`: count both
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def unit_of(module: str, project: str, below: tuple[str, ...]) -> str | None:
    """The unit a module belongs to, None outside the project and its `below` packages."""
    parts = module.split(".")
    if parts[0] in below:
        return parts[0]
    if parts[0] != project:
        return None
    if len(parts) < 2:
        return project
    if parts[1] not in LAYERS:
        return ".".join(parts[:2])  # a stray top-level module or folder: its own unit, in no layer
    return ".".join(parts[:3]) if len(parts) >= 3 else ".".join(parts[:2])


def layer_of(unit: str) -> int | None:
    parts = unit.split(".")
    return LAYERS.index(parts[1]) if len(parts) >= 2 and parts[1] in LAYERS else None


def known_units(root: Path, project: str, below: tuple[str, ...]) -> set[str]:
    units = set()
    for package in (project, *below):
        for path in (root / package).rglob("*.py"):
            units.add(unit_of(module_name(root, path), project, below))
    return units


def import_edges(root: Path, project: str, below: tuple[str, ...] = ()) -> list[Edge]:
    units = known_units(root, project, below)
    edges = []
    for package in (project, *below):
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(root, path)
            source = unit_of(module, project, below)
            for imported, line in imported_modules(path, module):
                target = unit_of(imported, project, below)
                if target is None or target == source:
                    continue
                if target not in units:  # `from vlablocks.core import config` names the unit one level down
                    continue
                edge = Edge(source, target, f"{path.relative_to(root)}:{line}")
                if edge not in edges:
                    edges.append(edge)
    return edges


def layer_violations(edges: list[Edge], below: tuple[str, ...] = ()) -> list[str]:
    problems = []
    for edge in edges:
        if edge.source in below:
            problems.append(f"{edge.where}: {edge.source} sits below the project and imports {edge.target}")
            continue
        if edge.target in below:
            continue
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is None or target is None:
            stray = edge.source if source is None else edge.target
            problems.append(f"{edge.where}: {stray} is in no layer ({', '.join(LAYERS)})")
        elif target > source:
            problems.append(
                f"{edge.where}: {edge.source} ({LAYERS[source]}) imports {edge.target} ({LAYERS[target]}), a higher layer"
            )
    return problems


def unit_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan), each sorted."""
    graph = defaultdict(set)
    for edge in edges:
        graph[edge.source].add(edge.target)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def folder_ties(edges: list[Edge]) -> dict[str, set[str]]:
    """unit -> the units it imports."""
    ties = defaultdict(set)
    for edge in edges:
        ties[edge.source].add(edge.target)
    return dict(ties)
