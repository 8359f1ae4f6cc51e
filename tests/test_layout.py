"""The package's shape: imports flow down the documented layers, nothing imports the CLI,
``import kdsearch`` is light.

Imports are read from the source (module level and inside functions alike, since a lazy import
is still a dependency); only ``if TYPE_CHECKING:`` blocks are left out, because they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdsearch"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)
    return out


def imports_of(name: str) -> set[str]:
    """The kdsearch modules that module ``name`` imports when it runs."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    found.add(sub)
                elif base in MODULES:
                    found.add(base)
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of names (first name repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_is_read_from_the_source() -> None:
    # If the reader missed imports, the tests below would pass on any code.
    assert "kdsearch.cli" in GRAPH["kdsearch.__main__"]
    assert any(dep.startswith("kdsearch.training") for dep in GRAPH["kdsearch.search.objective"])


def test_no_module_import_circle() -> None:
    assert find_cycle(GRAPH) is None


def subpackage(name: str) -> str:
    """``kdsearch.search.worker`` -> ``search``; a top-level module is its own node."""
    return name.split(".")[1] if "." in name else name


#: The layers, bottom up, as docs/architecture.md lists them: a subpackage or top-level module
#: may import its own layer and those below it, never one above. ``config`` sits above the
#: registries because a spec's names are checked against them (lazily: importing it loads no
#: torch).
LAYERS: list[set[str]] = [
    {"errors", "registry", "schema", "files", "paths", "redact", "meter", "threads"},
    {"data", "nets"},
    {"distill"},
    {"config"},
    {"training"},
    {"search", "deploy"},
    {"results", "benchmarks", "launch"},
    {"api", "kdsearch", "demo"},
    {"cli", "__main__"},
]


def subpackage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        graph.setdefault(subpackage(name), set()).update(
            subpackage(d) for d in deps if subpackage(d) != subpackage(name)
        )
    return graph


def test_subpackages_import_only_downwards() -> None:
    """The documented layer order, not only the absence of circles: no import goes up."""
    graph = subpackage_graph()
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    assert set(graph) == set(level), "place every subpackage and module in LAYERS"
    upward = sorted((a, b) for a, deps in graph.items() for b in deps if level[b] > level[a])
    assert not upward, upward
    assert find_cycle(graph) is None, graph  # nor a circle within a layer (data <-> nets)


def test_nothing_imports_the_cli() -> None:
    users = sorted(n for n, deps in GRAPH.items() if "kdsearch.cli" in deps)
    assert users == ["kdsearch.__main__"]


def _kdsearch_imports(function: ast.FunctionDef) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdsearch"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kdsearch")}
    return found


def test_every_command_calls_only_the_api() -> None:
    """A command's action does what its API function does, no more: a script calling
    kdsearch.api gets what the command line does. The exception type is the one exception."""
    tree = ast.parse(MODULES["kdsearch.cli"].read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    actions = [f for f in functions if f.name.startswith("cmd_")]
    assert len(actions) >= 20
    allowed = {"kdsearch.api", "kdsearch.errors.KDSearchError"}
    beyond = {
        f.name: sorted(_kdsearch_imports(f) - allowed)
        for f in functions
        if f.name != "main" and _kdsearch_imports(f) - allowed
    }
    assert not beyond, beyond
    assert {"kdsearch.api"} <= GRAPH["kdsearch.cli"]


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_subpackage_says_what_it_is(package: str) -> None:
    init = PACKAGE / package / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_import_kdsearch_loads_no_torch() -> None:
    heavy = "('torch', 'optuna', 'pandas')"
    code = f"import sys, kdsearch; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
