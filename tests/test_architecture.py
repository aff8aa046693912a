"""One direction of imports (docs/architecture.md), checked on the source tree.

- The contracts of ``[tool.importlinter]`` in ``pyproject.toml``, run by ``lint-imports`` in a
  subprocess: the library's layers (``geometry`` -> ``citydb`` -> ``worldmodel`` -> ``envs`` |
  ``viz``, the apps ``rollout``, ``scenario``, ``agents``, ``train``, ``eval`` above them, the
  small utilities ``errors``, ``cache``, ``registry``, ``_lazy``, ``paths``, ``config`` below),
  ``cityenv`` never importing ``carla_tools`` or ``policies``, and those two independent.
- No import cycle in ``cityenv``, ``carla_tools`` or ``policies``: an AST walk of every module
  (imports inside functions count, ``if TYPE_CHECKING:`` imports do not; the lazy namespaces
  of package ``__init__`` files import nothing), so a failure names the modules and lines of
  each cycle.

The last tests run both checkers on a tiny package with a cycle and a forbidden import, to show
that they can fail and what they say.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cityenv", "carla_tools", "policies")

Edges = dict[str, dict[str, str]]
"""importer -> {imported module: "path:line" of the import}."""


# --- the checker ------------------------------------------------------------------------------
def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` under ``root``."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, int]]:
    """Every import statement of a module, those under ``if TYPE_CHECKING:`` left out."""
    found = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch runs
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, node.lineno))
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> Edges:
    """The module-level import graph among the modules of ``packages`` under ``root``."""
    files: dict[str, Path] = {}
    for package in packages:
        files.update(module_names(root, package))
    edges: Edges = {name: {} for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node, line in _imports(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root)}:{line}"
            for module in _imported_modules(node, name, is_package, files):
                if module != name:
                    edges[name].setdefault(module, where)
    return edges


def _imported_modules(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, files: dict[str, Path]
) -> list[str]:
    """The modules of ``files`` that an import statement imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in files]
    base = node.module or ""
    if node.level:  # relative: from the importer's package, up level - 1 packages
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}".rstrip(".")
    # `from a import b` imports the module a.b when there is one, else the name b of module a.
    found = [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names
    ]
    return [module for module in dict.fromkeys(found) if module in files]


def cycles(edges: Edges) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module.

    Returns:
        Cycles as module lists whose last element imports the first, sorted.
    """
    found = []
    for component in _components(edges):
        if len(component) < 2:
            continue
        start = min(component)
        found.append(_shortest_cycle(edges, start, component))
    return sorted(found)


def _components(edges: Edges) -> list[set[str]]:
    """Strongly connected components (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def _shortest_cycle(edges: Edges, start: str, component: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``component`` (BFS)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            if child in component and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle")  # cannot happen inside a component


def describe(edges: Edges, cycle: list[str]) -> str:
    """``a -> b (a.py:3) -> ... -> a``: the cycle with the line of each import."""
    steps = [cycle[0]]
    for importer, imported in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        steps.append(f"{imported} ({edges[importer][imported]})")
    return " -> ".join(steps)


def tangled_with(edges: Edges, cycle: list[str]) -> list[str]:
    """Every module of the strongly connected component that holds ``cycle``."""
    return sorted(next(c for c in _components(edges) if cycle[0] in c))


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` (import-linter's command) run in ``cwd``, output captured."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


# --- the tree ---------------------------------------------------------------------------------
def test_import_linter_contracts_hold() -> None:
    done = lint_imports(ROOT, {**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, (
        "an import breaks a contract of [tool.importlinter] in pyproject.toml "
        "(docs/architecture.md says what each part may import):\n" + done.stdout + done.stderr
    )
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    edges = import_graph(ROOT, PACKAGES)
    found = [c for c in cycles(edges) if any(m.split(".")[0] == package for m in c)]
    assert not found, f"{len(found)} import cycle(s) in {package}, each must be broken:\n" + (
        "\n".join(
            f"  {describe(edges, c)}\n    (one of the cycles among {tangled_with(edges, c)})"
            for c in found
        )
    )


def test_the_library_imports_no_app_and_no_tool() -> None:
    """What import-linter checks, said per import line (no configuration to get wrong)."""
    edges = import_graph(ROOT, PACKAGES)
    apps = (
        "cityenv.rollout",
        "cityenv.scenario",
        "cityenv.agents",
        "cityenv.train",
        "cityenv.eval",
    )
    bad = [
        f"  {importer} imports {imported} ({where})"
        for importer, imports in sorted(edges.items())
        if importer.startswith("cityenv") and not importer.startswith(apps)
        for imported, where in sorted(imports.items())
        if imported.startswith(apps + ("carla_tools", "policies"))
    ]
    assert not bad, "the library must not import its apps or its users:\n" + "\n".join(bad)


def test_the_architecture_doc_names_the_contract_layers() -> None:
    """The layers of pyproject's contract are the layers the tree has."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = config["contracts"][0]["layers"]
    listed = {m.strip(" ()") for layer in layers for m in layer.replace("|", ":").split(":")}
    top_level = {
        name
        for name in module_names(ROOT, "cityenv")
        if name.count(".") == 1 and not name.endswith("__main__")
    }
    assert top_level <= listed, f"modules of cityenv in no layer: {sorted(top_level - listed)}"


# --- the checkers can fail ----------------------------------------------------------------------
def _tiny_package(root: Path) -> None:
    """``lib`` whose ``core`` imports ``app`` (forbidden) and ``a`` <-> ``b`` (a cycle)."""
    files = {
        "lib/__init__.py": "",
        "lib/core.py": "import lib.app\n",
        "lib/app.py": "",
        "lib/a.py": "from lib import b\n",
        "lib/b.py": "def f():\n    from . import a\n",
        "lib/typed.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lib.typed2\n"
        ),
        "lib/typed2.py": "import lib.typed\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_cycle_checker_names_the_chain(tmp_path: Path) -> None:
    _tiny_package(tmp_path)
    edges = import_graph(tmp_path, ("lib",))
    found = cycles(edges)
    assert found == [["lib.a", "lib.b"]]  # typed <-> typed2 only under TYPE_CHECKING
    assert describe(edges, found[0]) == "lib.a -> lib.b (lib/a.py:1) -> lib.a (lib/b.py:2)"


def test_import_linter_names_the_forbidden_chain(tmp_path: Path) -> None:
    _tiny_package(tmp_path)
    (tmp_path / ".importlinter").write_text(
        textwrap.dedent(
            """
            [importlinter]
            root_package = lib

            [importlinter:contract:layers]
            name = app above core
            type = layers
            layers =
                lib.app
                lib.core
            """
        )
    )
    done = lint_imports(tmp_path, {**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "app above core BROKEN" in done.stdout
    assert "lib.core -> lib.app (l.1)" in done.stdout
