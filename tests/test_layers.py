"""The layout's rules (DESIGN.md 1), read from every module's imports with ``ast``.

Every import counts, wherever it stands: at the top, in a function, or under TYPE_CHECKING. A rule
broken here is a layer that leaks, so each failure names the module and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("blindmatch", "node", "coordinator", "tests", "bench")
GENERATED = ("blindmatch.v1", "blindmatch.v2")
# The floors of blindmatch/, lowest first: a floor imports only the floors below it.
FLOORS = ("blindmatch.core", "blindmatch.runtime", "blindmatch.cli", "blindmatch.demo")
# What the protocol core may not touch: transport, generated code, and every other layer.
CORE_FORBIDDEN = ("grpc", "grpc_health", "google.protobuf", "node", "coordinator", "blindmatch")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (for ``from X import y``: X.y when that is a module, else X)
    names: tuple[str, ...]  # the names taken by ``from X import ...``
    line: int

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.module}:{self.line} imports {self.target}{names}"


def within(name: str, package: str | tuple[str, ...]) -> bool:
    packages = (package,) if isinstance(package, str) else package
    return any(name == p or name.startswith(p + ".") for p in packages)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            if not within(name, GENERATED):
                found[name] = path
    return found


MODULES = modules()


def is_package(name: str) -> bool:
    return name in MODULES and MODULES[name].name == "__init__.py"


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path) -> Iterator[Import]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES or within(submodule, GENERATED):
                    yield Import(module, submodule, (), node.lineno)
                else:
                    yield Import(module, source, (alias.name,), node.lineno)


ALL = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def test_the_tree_is_read() -> None:
    # Guards the rules below against passing because nothing was found.
    assert {"blindmatch.core.spec", "blindmatch.runtime.serde", "node.server"} <= MODULES.keys()
    assert any(imp.target == "blindmatch.core.spec" for imp in ALL)


def test_core_imports_no_transport_and_no_other_layer() -> None:
    bad = [
        imp
        for imp in ALL
        if within(imp.module, "blindmatch.core")
        and any(within(imp.target, f) for f in CORE_FORBIDDEN)
        and not within(imp.target, "blindmatch.core")
    ]
    assert not bad, "\n".join(map(str, bad))


def test_each_floor_imports_only_the_floors_below_it() -> None:
    def floor(name: str) -> int | None:
        return next((i for i, f in enumerate(FLOORS) if within(name, f)), None)

    bad = []
    for imp in ALL:
        mine, theirs = floor(imp.module), floor(imp.target)
        if mine is not None and theirs is not None and theirs > mine:
            bad.append(imp)
    assert not bad, "\n".join(map(str, bad))


def test_blindmatch_imports_neither_node_nor_coordinator() -> None:
    bad = [
        imp
        for imp in ALL
        if within(imp.module, "blindmatch")
        and (within(imp.target, "node") or within(imp.target, "coordinator"))
    ]
    assert not bad, "\n".join(map(str, bad))


@pytest.mark.parametrize(("one", "other"), [("node", "coordinator"), ("coordinator", "node")])
def test_node_and_coordinator_meet_only_over_grpc(one: str, other: str) -> None:
    bad = [imp for imp in ALL if within(imp.module, one) and within(imp.target, other)]
    assert not bad, "\n".join(map(str, bad))


def test_no_private_name_is_taken_from_another_package() -> None:
    def package(name: str) -> str:
        return name if is_package(name) else name.rpartition(".")[0]

    bad = [
        imp
        for imp in ALL
        if imp.target.split(".")[0] in PACKAGES
        and package(imp.target) != package(imp.module)
        and (
            any(n.startswith("_") for n in imp.names)
            or (imp.target.rpartition(".")[2].startswith("_") and not imp.target.endswith("__"))
        )
    ]
    assert not bad, "\n".join(map(str, bad))


def top_level_names(path: Path) -> tuple[set[str], set[str]]:
    """The names a module defines itself, and those it only imports."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
    return defined, imported - defined


def test_every_name_is_imported_from_where_it_is_defined() -> None:
    # A re-export hides a dependency: the importer seems to need one module and needs another.
    names = {name: top_level_names(path) for name, path in MODULES.items()}
    bad = [
        f"{imp} — defined elsewhere"
        for imp in ALL
        if imp.target in names
        and not is_package(imp.target)
        and any(n in names[imp.target][1] for n in imp.names)
    ]
    assert not bad, "\n".join(bad)


def test_no_test_module_imports_another() -> None:
    bad = [
        imp for imp in ALL if within(imp.module, "tests") and imp.target.startswith("tests.test_")
    ]
    assert not bad, "\n".join(map(str, bad))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycles_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_there_is_no_import_circle() -> None:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in ALL:
        if imp.target in MODULES and not is_package(imp.target) and imp.target != imp.module:
            edges[imp.module].add(imp.target)
    found = cycles(edges)
    assert not found, "\n".join(" <-> ".join(c) for c in found)
