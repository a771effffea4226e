"""The package's import graph: no cycles, and no hidden imports of mmjax modules inside functions.

Dependencies point one way (entry points -> train loop -> library -> contract/config); a cycle
or a function-level import that hides one makes a module impossible to read or test alone. A
function-level import is allowed only with a comment on its line saying why (an optional heavy
dependency, a standalone entry point that must not pull in the training stack).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mmjax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    """The mmjax modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "mmjax"]
    if node.level:  # relative import
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "mmjax":
        return []
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return found or [base]


def _imports(name: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(every mmjax module it imports, [(line, target)] imported inside functions without a
    comment on the line)."""
    path = MODULES[name]
    source = path.read_text()
    lines = source.splitlines()
    top, hidden = set(), []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, name):
                    top.add(target)  # a lazy import is still a dependency: cycles count it
                    if in_function and "#" not in lines[child.lineno - 1]:
                        hidden.append((child.lineno, target))
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing-only imports run never
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return top, hidden


def test_every_module_is_found():
    assert "mmjax.train" in MODULES and "mmjax.contract" in MODULES
    assert len(MODULES) > 30


def test_no_import_cycle():
    graph = {name: _imports(name)[0] & set(MODULES) for name in MODULES}
    # A package's own __init__ importing its submodules is not a cycle with them.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)


def test_function_level_imports_say_why():
    hidden = [f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {target}"
              for name in MODULES for line, target in _imports(name)[1]]
    assert not hidden, "function-level imports of mmjax modules without a comment saying why:\n" + "\n".join(hidden)


def test_contract_depends_on_nothing_of_ours():
    assert _imports("mmjax.contract")[0] == set()
