"""The project's import graph, read from the source (nothing is imported).

Every import statement counts, lazy ones inside functions included, except those under
``if TYPE_CHECKING:`` (they run for the type checker only). Importing ``a.b.c`` also runs the
packages ``a.b`` and ``a``. The architecture tests look for cycles in it; ``sop stages`` takes
each stage's code deps from it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = "pipeline"


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``: ``pipeline.data.store`` -> its file."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (i for child in node.orelse for i in runtime_imports(child))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from runtime_imports(node)


def imported_names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The dotted names an import may load: ``from a import b`` may load ``a`` or ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, base] if base else parent)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def imports_of(path: Path, name: str, modules: Iterable[str]) -> set[str]:
    """The project modules the file ``path`` (module ``name``) runs when imported."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()
    for node in runtime_imports(ast.parse(path.read_text())):
        for target in imported_names(node, package):
            while target:  # the module and every package above it run
                # ... except this module's own packages: Python runs them before it, and a
                # package's __init__ re-exporting its modules is no cycle.
                if target in known and not f"{name}.".startswith(f"{target}."):
                    edges.add(target)
                target = target.rpartition(".")[0]
    return edges


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every module of the package."""
    modules = module_files(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def closure(script: Path, root: Path) -> list[Path]:
    """``script`` and every package file it runs, directly or through other modules, sorted."""
    modules = module_files(root)
    graph = import_graph(root)
    todo = sorted(imports_of(script, "__main__", modules))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name] - seen)
    return [script, *sorted(modules[name] for name in seen)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
