"""The package's shape: no import cycle, layers that point one way, a README that matches.

The import graph (:mod:`pipeline.imports`) counts lazy imports inside functions and leaves out
those under ``if TYPE_CHECKING:``; importing ``a.b.c`` also runs the packages ``a.b`` and ``a``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.imports import cycles, import_graph

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
# What a layer may not import (prefixes of module names): models know nothing of files on disk
# layouts, datasets or DVC; the engine and tasks nothing of orchestration; the table of names,
# the layout and the schema nothing of ours but errors.
FORBIDDEN = {
    "pipeline.models": ("pipeline.data", "pipeline.flows", "pipeline.train", "pipeline.layout",
                        "pipeline.config", "pipeline.tracking", "pipeline.cli", "pipeline.stage"),
    "pipeline.train": ("pipeline.flows", "pipeline.tracking", "pipeline.cli", "pipeline.stage",
                       "pipeline.definition"),
    "pipeline.data": ("pipeline.flows", "pipeline.models", "pipeline.train", "pipeline.tracking",
                      "pipeline.cli", "pipeline.synthetic"),
    "pipeline.zoo": ("pipeline.",),
    "pipeline.layout": ("pipeline.",),
    "pipeline.imports": ("pipeline.",),
    "pipeline.config": ("pipeline.data", "pipeline.models", "pipeline.train", "pipeline.flows"),
    "pipeline.config_data": ("pipeline.data", "pipeline.models", "pipeline.train",
                             "pipeline.flows"),
}  # fmt: skip


def test_the_graph_sees_lazy_imports_and_parent_packages() -> None:
    graph = import_graph(ROOT)
    assert "pipeline.train.engine" in graph["pipeline.train.pretrain"]
    assert "pipeline.models" in graph["pipeline.train.pretrain"]  # via pipeline.models.overlap
    # cli.py imports most of its commands' modules inside the commands
    assert "pipeline.tracking" in graph["pipeline.cli"]


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_pipeline_has_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles in pipeline/: " + "; ".join(" <-> ".join(c) for c in found)


def wrong_edges(graph: dict[str, set[str]], layer: str) -> list[str]:
    """The imports of ``layer``'s modules that its rule forbids (errors are everyone's)."""
    members = [m for m in graph if m == layer or m.startswith(f"{layer}.")]
    return sorted(
        f"{module} -> {target}"
        for module in members
        for target in graph[module]
        if target != "pipeline.errors"
        and any(target == f or target.startswith(f) for f in FORBIDDEN[layer])
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_point_one_way(layer: str) -> None:
    graph = import_graph(ROOT)
    assert any(m == layer or m.startswith(f"{layer}.") for m in graph)
    wrong = wrong_edges(graph, layer)
    assert not wrong, wrong


def test_the_layer_rule_catches_a_wrong_edge() -> None:
    graph = {
        "pipeline.train.engine": {"pipeline.flows.common", "pipeline.errors", "pipeline.layout"},
        "pipeline.flows.common": set(),
    }
    assert wrong_edges(graph, "pipeline.train") == [
        "pipeline.train.engine -> pipeline.flows.common"
    ]


def test_no_model_module_mentions_dvc() -> None:
    for path in (PACKAGE / "models").rglob("*.py"):
        assert "dvc" not in path.read_text().lower(), path


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


def _functions(path: Path) -> list[tuple[str, int]]:
    import ast

    tree = ast.parse(path.read_text())
    return [
        (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_functions_fit_on_a_screen_and_modules_stay_readable() -> None:
    """No function in pipeline/ over 80 lines, no module over 700; the engine's steps 60."""
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(ROOT)
        limit = 60 if path.name == "engine.py" else 80
        long_functions += [f"{where}:{n} ({k})" for n, k in _functions(path) if k > limit]
        lines = len(path.read_text().splitlines())
        if lines > 700:
            long_modules.append(f"{where} ({lines})")
    assert not long_functions, long_functions
    assert not long_modules, long_modules
    assert dict(_functions(PACKAGE / "train" / "engine.py"))["fit"] > 10  # the walk sees it
