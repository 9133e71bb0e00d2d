"""The package's layout rules, read from the source with ``ast`` (nothing is imported):

* the pbc modules import each other without a cycle (imports at module level and inside
  functions alike; ``if TYPE_CHECKING:`` imports never run and are left out);
* a pbc module imports another pbc module at module level only, so the graph above is
  what importing it really does;
* the adapters stay at the edges: only ``pbc/analysis/`` imports ArviZ, only
  ``pbc/reporting/`` and ``pbc/analysis/`` import matplotlib, and ``pbc/compression/`` and
  ``pbc/nets.py`` (the compressed networks' runtime) never import Pyro.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

import pbc

PKG = pathlib.Path(pbc.__file__).parent


@dataclass(frozen=True)
class Import:
    """One imported module: ``target`` (dotted, absolute), where, and how it was imported."""

    source: str              # the importing module, e.g. "pbc.methods.dc"
    target: str              # the imported module, e.g. "pbc.compression.plan" or "pyro"
    lineno: int
    in_function: bool        # inside a def (runs when called, not at import)
    type_checking: bool      # under ``if TYPE_CHECKING:`` (never runs)

    def where(self) -> str:
        return f"{self.source}:{self.lineno} imports {self.target}"


def _module_name(path: pathlib.Path) -> str:
    parts = ("pbc", *path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules ``from X import a, b`` imports: ``X.a`` where that is a pbc module (``from
    pbc import io`` imports pbc.io), else ``X`` itself."""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in MODULES else base)
    return targets


def _imports(module: str, text: str, is_package: bool = False) -> list[Import]:
    tree = ast.parse(text, filename=module)
    found: list[Import] = []

    def visit(node, in_function: bool, type_checking: bool):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, in_function,
                                    type_checking))
        elif isinstance(node, ast.ImportFrom):
            for target in _resolve_from(node, module, is_package):
                found.append(Import(module, target, node.lineno, in_function, type_checking))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(tree, False, False)
    return found


IMPORTS = {name: _imports(name, path.read_text(), path.name == "__init__.py")
           for name, path in MODULES.items()}


def _top(target: str) -> str:
    return target.split(".", 1)[0]


def _pbc_target(target: str) -> str | None:
    """The pbc module that importing ``target`` names (its longest known prefix)."""
    if _top(target) != "pbc":
        return None
    while target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def _graph() -> dict[str, set[str]]:
    """Module → the pbc modules its import statements run.  Importing ``pbc.a.b`` runs
    ``pbc/a/__init__.py`` too, unless ``pbc.a`` encloses the importer (then it is already
    being imported: a submodule importing a sibling is no cycle)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, imports in IMPORTS.items():
        for imp in imports:
            target = _pbc_target(imp.target)
            if target is None or imp.type_checking:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                step = ".".join(parts[:i])
                if step != name and not name.startswith(step + "."):
                    graph[name].add(step)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def dfs(node):
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt):], nxt]
            if colour[nxt] == white and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white and (cycle := dfs(node)):
            return cycle
    return None


# ----------------------------------------------------------------------------- the scan itself
def test_the_scan_sees_every_subpackage_and_resolves_imports():
    """Guard against a scan that silently reads nothing."""
    for sub in ("bayes", "methods", "compression", "analysis", "reporting"):
        assert f"pbc.{sub}" in MODULES and any(m.startswith(f"pbc.{sub}.") for m in MODULES)
    graph = _graph()
    assert {"pbc.methods.base", "pbc.methods.dc", "pbc.methods.gnj"} <= graph["pbc.methods"]
    assert "pbc.compression.plan" in graph["pbc.methods.dc"]


def test_resolution_of_relative_and_from_imports():
    def resolve(code, module, is_package=False):
        return _resolve_from(ast.parse(code).body[0], module, is_package)

    assert resolve("from . import io", "pbc.train") == ["pbc.io"]
    assert resolve("from .base import Method", "pbc.methods.dc") == ["pbc.methods.base"]
    assert resolve("from .base import Method", "pbc.methods", True) == ["pbc.methods.base"]
    assert resolve("from ..io import load_torch", "pbc.methods.dc") == ["pbc.io"]
    assert resolve("from pbc import methods, nets", "pbc.config") == ["pbc.methods", "pbc.nets"]
    assert resolve("from pbc.methods import get", "pbc.config") == ["pbc.methods"]
    assert _pbc_target("pbc.methods.dc.magnitude_mask") == "pbc.methods.dc"
    assert _pbc_target("pyro.poutine") is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_and_type_checking_imports_are_told_apart():
    text = (
        "from typing import TYPE_CHECKING\n"
        "import pbc.io\n"
        "if TYPE_CHECKING:\n"
        "    from pbc.config import TrainConfig\n"
        "class C:\n"
        "    import pbc.data\n"
        "def f():\n"
        "    from pbc import nets\n"
        "    if TYPE_CHECKING:\n"
        "        import pbc.train\n"
        "    g = lambda: __import__('x')\n"
        "    import matplotlib.pyplot as plt\n")
    got = {(i.target, i.in_function, i.type_checking)
           for i in _imports("pbc.toy", text) if i.target != "typing"}
    assert got == {("pbc.io", False, False), ("pbc.config", False, True),
                   ("pbc.data", False, False), ("pbc.nets", True, False),
                   ("pbc.train", True, True), ("matplotlib.pyplot", True, False)}


# ----------------------------------------------------------------------------- the rules
def test_no_import_cycle_between_pbc_modules():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


#: the one import made where it runs: `pbc --help` answers before torch is loaded
DEFERRED = {("pbc.cli", "pbc.commands")}


def test_pbc_modules_import_each_other_at_module_level_only():
    offenders = [imp.where() for imports in IMPORTS.values() for imp in imports
                 if imp.in_function and not imp.type_checking
                 and _pbc_target(imp.target) is not None
                 and (imp.source, _pbc_target(imp.target)) not in DEFERRED]
    assert not offenders, ("pbc modules imported inside a function (a hidden dependency, "
                           "usually a cycle dodged):\n" + "\n".join(offenders))


def _importers(library: str) -> set[str]:
    return {name for name, imports in IMPORTS.items()
            if any(_top(i.target) == library and not i.type_checking for i in imports)}


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("library,allowed", [
    ("arviz", ("pbc.analysis",)),
    ("matplotlib", ("pbc.analysis", "pbc.reporting")),
])
def test_adapters_stay_in_their_subpackages(library, allowed):
    importers = _importers(library)
    assert importers, f"no module imports {library}: the scan is broken"
    offenders = sorted(m for m in importers if not _under(m, *allowed))
    assert not offenders, f"{library} imported outside {allowed}: {offenders}"


def test_compression_and_nets_do_not_import_pyro():
    assert _importers("pyro"), "no module imports pyro: the scan is broken"
    runtime = [m for m in MODULES if _under(m, "pbc.compression", "pbc.nets")]
    assert "pbc.compression.codec" in runtime and "pbc.nets" in runtime
    offenders = sorted(_importers("pyro") & set(runtime))
    assert not offenders, f"pyro imported by the compressed networks' runtime: {offenders}"


def test_compression_and_nets_do_not_reach_pyro_through_other_pbc_modules():
    """Importing a compression module must not load Pyro through the pbc modules it imports
    (``pbc.bayes`` imports Pyro): the compressed networks' runtime is torch and numpy."""
    runtime = [m for m in MODULES if _under(m, "pbc.compression", "pbc.nets")]
    graph, pyro_importers = _graph(), _importers("pyro")
    chains = []
    for start in runtime:
        came_from, todo = {start: None}, [start]
        while todo:                         # breadth first: the shortest chain to pyro
            m = todo.pop(0)
            if m in pyro_importers:
                chain = [m]
                while came_from[chain[-1]] is not None:
                    chain.append(came_from[chain[-1]])
                chains.append(" → ".join(reversed(chain)) + " → pyro")
                break
            for nxt in sorted(graph[m] - came_from.keys()):
                came_from[nxt] = m
                todo.append(nxt)
    assert not chains, "the compressed networks' runtime imports pyro:\n" + "\n".join(chains)
