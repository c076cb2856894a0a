"""The package's shape: no import cycle in pipeline/, lazy imports inside functions included.

Imports under ``if TYPE_CHECKING:`` run only for the type checker and are left out; importing
``a.b.c`` also runs the packages ``a.b`` and ``a``, which count as imported (except by modules
inside them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
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
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, base] if base else parent)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text())):
            for target in imported_names(node, package):
                while target:  # the module and every package above it run
                    # ... except this module's own packages: Python runs them before it, and a
                    # package's __init__ re-exporting its modules is no cycle.
                    if target in modules and not f"{name}.".startswith(f"{target}."):
                        edges.add(target)
                    target = target.rpartition(".")[0]
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
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


def test_the_graph_sees_lazy_imports_and_parent_packages() -> None:
    graph = import_graph()
    assert "pipeline.train.engine" in graph["pipeline.train.pretrain"]
    assert "pipeline.models" in graph["pipeline.train.pretrain"]  # via pipeline.models.overlap
    # cli.py imports most of its commands' modules inside the commands
    assert "pipeline.tracking" in graph["pipeline.cli"]


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_pipeline_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in pipeline/: " + "; ".join(" <-> ".join(c) for c in found)


def architecture_listing() -> set[str]:
    """The package tree the README's Architecture block lists: ``data/tiling.py`` etc."""
    text = (ROOT / "README.md").read_text().split("## Architecture", 1)[1]
    block = text.split("```", 2)[1]
    listed: set[str] = set()
    folders: list[str] = []
    inside = False
    for line in block.splitlines():
        name = line.strip().split("  ")[0]
        depth = (len(line) - len(line.lstrip())) // 2
        if depth == 0:
            inside = name == "pipeline/"
            folders = []
            continue
        entries = name.split(", ")
        if not inside or (not all(e.endswith(".py") for e in entries) and not name.endswith("/")):
            continue  # a description's continuation line
        folders = folders[: depth - 1]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
            continue
        for entry in entries:
            listed.add("/".join([*folders, entry]))
    return listed


def test_the_readme_architecture_lists_every_module_and_no_other() -> None:
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    listed = architecture_listing()
    assert "data/tiling.py" in listed  # the parse reads the nested folders
    assert not modules - listed, f"README Architecture lacks: {sorted(modules - listed)}"
    assert not listed - modules, (
        f"README Architecture lists no such module: {sorted(listed - modules)}"
    )


def test_nothing_cites_a_markdown_file_that_is_not_in_the_repository() -> None:
    """Notes outside the repository (the project's planning notes) are no reference for a
    reader of the code: cite the README's sections instead."""
    import re
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    known = {Path(path).name for path in tracked} | {"report.md"}  # report.md: the report's output
    cited: dict[str, str] = {}
    for folder in ("pipeline", "stages", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in re.findall(r"[\w./-]+\.md\b", path.read_text()):
                cited.setdefault(Path(name).name, str(path.relative_to(ROOT)))
    for path in ("Makefile", "Dockerfile", "dvc.yaml", "params.yaml", "demo/params.yaml"):
        for name in re.findall(r"[\w./-]+\.md\b", (ROOT / path).read_text()):
            cited.setdefault(Path(name).name, path)
    assert "README.md" in cited  # the scan reads the sources
    missing = {name: where for name, where in cited.items() if name not in known}
    assert not missing, f"cited but not in the repository: {missing}"
