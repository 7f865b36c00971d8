"""The package's import graph, read from the source with ast (every import, function-local ones too).

- no import cycles between phaselm's modules;
- no underscore-private name imported from another phaselm module (make it public or move it);
- every third-party module that src/phaselm imports is declared in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "phaselm"

# Import names whose distribution on PyPI is spelled differently.
DISTRIBUTION_OF = {"fla": "flash-linear-attention", "yaml": "pyyaml", "PIL": "pillow"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def resolve_from(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]):
    """(target module, imported name or None, line) for every import in the file, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(name, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                # `from . import kssm` imports a module, not a name of the package.
                if submodule in modules:
                    yield submodule, None, node.lineno
                else:
                    yield source, alias.name, node.lineno


def internal_edges() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(name, path, modules):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

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
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_graph_sees_function_local_and_relative_imports():
    graph = internal_edges()
    # reporting's package module re-exports page (relative, module level) ...
    assert "phaselm.reporting.page" in graph["phaselm.reporting"]
    # ... and backbones registers the model classes with a function-local `from . import models`.
    assert "phaselm.models" in graph["phaselm.backbones"]


def test_cycle_finder_finds_a_cycle():
    groups = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert [g for g in groups if len(g) > 1] == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = [group for group in strongly_connected(internal_edges()) if len(group) > 1]
    assert not cycles, f"modules that import each other: {cycles}"


def test_no_private_names_cross_modules():
    modules = package_modules()
    found = set()
    where = {}
    for name, path in modules.items():
        for target, imported, line in imports_of(name, path, modules):
            private = imported is not None and imported.startswith("_") and not imported.startswith("__")
            if private and target.split(".")[0] == "phaselm" and target != name:
                found.add((name, target, imported))
                where[(name, target, imported)] = f"{path.relative_to(ROOT)}:{line}"
    offenders = sorted(found)
    assert not offenders, "private names imported across modules: " + ", ".join(
        f"{where[o]} imports {o[2]} from {o[1]}" for o in offenders
    )


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for group in project.get("optional-dependencies", {}).values():
        requirements += group
    return {normalized(re.match(r"[A-Za-z0-9_.\-]+", r.strip()).group(0)) for r in requirements}


def test_every_third_party_import_is_declared():
    modules = package_modules()
    imported = {}
    for name, path in modules.items():
        for target, _, line in imports_of(name, path, modules):
            top = target.split(".")[0]
            if top and top != "phaselm" and top not in sys.stdlib_module_names and top != "__future__":
                imported.setdefault(top, f"{path.relative_to(ROOT)}:{line}")
    declared = declared_distributions()
    missing = {
        top: where for top, where in imported.items() if normalized(DISTRIBUTION_OF.get(top, top)) not in declared
    }
    assert not missing, f"imported but not in pyproject's dependencies or optional groups: {missing}"
    assert "torch" in imported  # the scan saw the package's imports at all
