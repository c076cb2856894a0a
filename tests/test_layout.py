"""``pipeline.layout`` and dvc.yaml spell the same paths: every output, metric and plot a stage
declares (and every stage output another stage depends on) is the layout's path for the same
matrix item, and every path the layout gives lies under the root it was given.

Both sides are checked against each other, so a path changed in one place only fails here: the
last tests move each layout function and edit dvc.yaml's text (in memory) to show it.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import layout
from pipeline.config import load_params
from pipeline.flows.finetune import Cell
from pipeline.flows.pretrain import pretrain_name

REPO = Path(__file__).resolve().parents[1]
ROOTS = [pytest.param(REPO, id="paper"), pytest.param(REPO / "demo", id="demo")]
# demo/ only: its synthetic archive, the demo's input (the download stage's source), not an
# output of the paper pipeline.
DEMO_INPUT_STAGES = {"synth"}
DEMO_INPUTS = "archive/"

# A sample matrix/foreach item per stage, rendered as DVC renders it (str of the YAML value).
DATASET = "landcoverai"
BACKBONE, SUBIMAGE, JITTER = "vits14", "112", "0.0"
MODEL, FRACTION, SEED = "vits14-sop", "0.25", "0"
VARIANT = f"{BACKBONE}-{SUBIMAGE}-{JITTER}"  # the pretrain stage's name for its item
CELL = Cell(DATASET, MODEL, float(FRACTION), int(SEED))
# The sweeps' runs, named by the flow as the inits that start from them (sop-img0.5, sop-loveda).
SHARE, OTHER = "0.5", "loveda"
SCALE_RUN = pretrain_name(BACKBONE, int(SUBIMAGE), float(JITTER), f"sop-img{SHARE}")
TRANSFER_RUN = pretrain_name(BACKBONE, int(SUBIMAGE), float(JITTER), f"sop-{OTHER}")
GRID_ITEM = {
    "item.dataset": DATASET,
    "item.model": MODEL,
    "item.fraction": FRACTION,
    "item.seed": SEED,
}
KINDS = ("outs", "metrics", "plots", "deps")

# Where the layout keeps this machine's state: never declared to DVC.
LOCAL_STATE = {"state_dir", "checkpoint_root", "weights_cache"}
# The file names the declarations use (moving any must fail the comparison).
DECLARED_NAMES = (
    "ENCODER_FILE",
    "PROVENANCE_FILE",
    "BEST_WEIGHTS_FILE",
    "RUN_FILE",
    "RESULTS_DIR",
    "RESULTS_TABLE",
)


@dataclass(frozen=True)
class Expected:
    """A stage's sample item (``${...}`` -> value) and the paths it must declare, by kind."""

    item: Mapping[str, str]
    paths: Mapping[str, list[Path]]


def expected(root: Path) -> dict[str, Expected]:
    """What each stage of dvc.yaml declares for its sample item, asked of the layout.

    ``deps`` lists only the stage outputs a stage reads (its source files are not the layout's).
    """
    encoder_dir = layout.pretrain_dir(root, VARIANT)
    cell = layout.cell_dir(root, CELL)
    return {
        "download": Expected({"item": DATASET}, {"outs": [layout.raw_dir(root, DATASET)]}),
        "tile": Expected(
            {"item": DATASET},
            {
                "deps": [layout.raw_dir(root, DATASET)],
                "outs": [layout.tiles_dir(root, DATASET)],
                "metrics": [layout.summary_path(root, DATASET)],
            },
        ),
        "pretrain": Expected(
            {
                "item.backbone": BACKBONE,
                "item.subimage": SUBIMAGE,
                "item.jitter": JITTER,
                "pretrain.dataset": DATASET,
            },
            {
                "deps": [layout.tiles_dir(root, DATASET)],
                "outs": [encoder_dir / layout.ENCODER_FILE, encoder_dir / layout.PROVENANCE_FILE],
                "metrics": [layout.pretrain_metrics_path(root, VARIANT)],
                "plots": [layout.pretrain_curve_path(root, VARIANT)],
            },
        ),
        **{
            stage: Expected(
                {"item.backbone": BACKBONE, **item},
                {
                    "deps": [layout.tiles_dir(root, dataset)],
                    "outs": [
                        layout.pretrain_dir(root, run) / layout.ENCODER_FILE,
                        layout.pretrain_dir(root, run) / layout.PROVENANCE_FILE,
                    ],
                    "metrics": [layout.pretrain_metrics_path(root, run)],
                    "plots": [layout.pretrain_curve_path(root, run)],
                },
            )
            for stage, item, dataset, run in (
                (
                    "pretrain_images",
                    {"item.fraction": SHARE, "pretrain.dataset": DATASET},
                    DATASET,
                    SCALE_RUN,
                ),
                ("pretrain_transfer", {"item.dataset": OTHER}, OTHER, TRANSFER_RUN),
            )
        },
        "weights": Expected(
            {"item": MODEL},
            {
                # Every pretext variant's encoder and metrics folders (DVC deps cannot differ
                # per item).
                "deps": [encoder_dir.parent, layout.pretrain_metrics_dir(root)],
                "outs": [
                    layout.init_path(root, MODEL),
                    layout.init_path(root, MODEL).with_suffix(".json"),
                ],
            },
        ),
        "finetune": Expected(
            GRID_ITEM,
            {
                "deps": [layout.tiles_dir(root, DATASET), layout.init_path(root, MODEL)],
                "outs": [cell / layout.BEST_WEIGHTS_FILE, cell / layout.RUN_FILE],
                "metrics": [layout.finetune_metrics_path(root, CELL)],
                "plots": [layout.finetune_curve_path(root, CELL)],
            },
        ),
        "evaluate": Expected(
            GRID_ITEM,
            {
                "deps": [
                    layout.tiles_dir(root, DATASET),
                    cell / layout.BEST_WEIGHTS_FILE,
                    cell / layout.RUN_FILE,
                ],
                "metrics": [layout.evaluate_metrics_path(root, CELL)],
                "outs": [
                    layout.confusion_path(root, CELL, ".json"),
                    layout.confusion_path(root, CELL, ".png"),
                    layout.tile_confusion_path(root, CELL),
                ],
            },
        ),
        **predict_stage(root),
        "report": Expected(
            {},
            {
                "deps": [
                    layout.finetune_metrics_dir(root),
                    layout.evaluate_metrics_dir(root),
                    layout.finetune_curves_dir(root),
                    layout.tile_confusion_dir(root),
                ],
                "outs": [layout.results_dir(root)],
                "metrics": [layout.report_metrics_path(root)],
            },
        ),
    }


def predict_stage(root: Path) -> dict[str, Expected]:
    """LoveDA's test-server submissions: a stage only in a profile whose grid has LoveDA cells."""
    if "loveda" not in load_params(root / layout.PARAMS_FILE).finetune.datasets:
        return {}
    cell = Cell("loveda", MODEL, float(FRACTION), int(SEED))
    weights = layout.cell_dir(root, cell)
    return {
        "predict": Expected(
            {**GRID_ITEM, "item.dataset": "loveda"},
            {
                "deps": [
                    layout.raw_dir(root, "loveda"),
                    weights / layout.BEST_WEIGHTS_FILE,
                    weights / layout.RUN_FILE,
                ],
                "outs": [layout.submission_path(root, cell)],
            },
        )
    }


def top_level_plots(root: Path) -> list[Path]:
    """dvc.yaml's own ``plots:``: the report's table, then every grid cell's curve (the charts
    of a dataset and backbone's cells)."""
    params = load_params(root / layout.PARAMS_FILE)
    grid = params.finetune
    cells = [
        Cell(dataset, model, fraction, seed)
        for dataset in grid.datasets
        for model in grid.models
        for fraction in params.data.label_fractions
        for seed in grid.seeds
    ]
    curves = [layout.finetune_curve_path(root, cell) for cell in cells]
    return [layout.results_dir(root) / layout.RESULTS_TABLE, *curves]


def plotted_files(section: list[Any]) -> list[str]:
    """The data files of dvc.yaml's top-level plots: a plot's ``y`` files, or its own name."""
    files: list[str] = []
    for entry in section:
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        y = spec.get("y") if isinstance(spec, dict) else None
        files.extend(y if isinstance(y, dict) else [name])
    return files


def render(path: str, item: Mapping[str, str]) -> str:
    """``path`` with each ``${key}`` replaced by the sample item's value; an unknown key fails."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        assert key in item, f"{path}: no sample value for ${{{key}}}"
        return item[key]

    return re.sub(r"\$\{([^}]+)\}", value, path)


def entries(section: list[Any] | None) -> list[str]:
    """The paths of an outs/metrics/plots/deps list (an entry is a path or {path: options})."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in section or []]


def is_stage_output(dep: str) -> bool:
    """A dep that another stage writes: not a source file, not the demo's own archive."""
    return not dep.endswith(".py") and not dep.startswith(DEMO_INPUTS)


def mismatches(pipeline: Mapping[str, Any], root: Path) -> list[str]:
    """Every difference between dvc.yaml's declarations (loaded) and the layout under ``root``."""
    found: list[str] = []
    stages: dict[str, Any] = dict(pipeline["stages"])
    if root != REPO:
        stages = {k: v for k, v in stages.items() if k not in DEMO_INPUT_STAGES}
    wanted = expected(root)
    if set(stages) != set(wanted):
        found.append(f"stages: dvc.yaml {sorted(stages)} != layout {sorted(wanted)}")
    for name in sorted(set(stages) & set(wanted)):
        stage = stages[name].get("do", stages[name])  # foreach stages hold theirs under do
        for kind in KINDS:
            declared = [render(p, wanted[name].item) for p in entries(stage.get(kind))]
            if kind == "deps":
                declared = [d for d in declared if is_stage_output(d)]
            ours = [p.relative_to(root).as_posix() for p in wanted[name].paths.get(kind, [])]
            if declared != ours:
                found.append(f"{name}.{kind}: dvc.yaml {declared} != layout {ours}")
    plots = plotted_files(pipeline.get("plots") or [])
    ours = [p.relative_to(root).as_posix() for p in top_level_plots(root)]
    if plots != ours:
        found.append(f"plots: dvc.yaml {plots} != layout {ours}")
    return found


def load(root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((root / layout.DVC_FILE).read_text())
    return loaded


@pytest.mark.parametrize("root", ROOTS)
def test_dvc_yaml_declares_exactly_the_layouts_paths(root: Path) -> None:
    assert mismatches(load(root), root) == []


def test_the_cell_name_is_the_one_dvc_renders() -> None:
    """The layout names a cell's files by ``Cell.name``; DVC by the stage's matrix item."""
    assert CELL.name == render("${item.model}-${item.fraction}-s${item.seed}", GRID_ITEM)


# --- every path under its root ---------------------------------------------------------------

FUNCTIONS = sorted(
    name
    for name, function in inspect.getmembers(layout, inspect.isfunction)
    if function.__module__ == layout.__name__ and not name.startswith("_")
)
SAMPLE_ARGUMENTS: dict[str, Any] = {
    "dataset": DATASET,
    "name": VARIANT,
    "model": MODEL,
    "cell": CELL,
    "suffix": ".png",
}


def call(name: str, root: Path) -> Path:
    """The layout function ``name`` with ``root`` and a sample value for each other parameter."""
    function: Callable[..., Path] = getattr(layout, name)
    arguments = {
        parameter: root if parameter == "root" else SAMPLE_ARGUMENTS[parameter]
        for parameter in inspect.signature(function).parameters
    }
    return function(**arguments)


def test_the_layout_has_functions_to_check() -> None:
    assert {"raw_dir", "cell_dir", "results_dir", "checkpoint_root"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_layout_path_lies_under_its_root(name: str, tmp_path: Path) -> None:
    root = tmp_path / "project"
    path = call(name, root)
    assert isinstance(path, Path)
    assert path != root
    assert path.is_relative_to(root)
    assert ".." not in path.relative_to(root).parts
    assert path.resolve().is_relative_to(root.resolve())
    assert call(name, Path("elsewhere")) == Path("elsewhere") / path.relative_to(root)


# --- the comparison catches a change on either side --------------------------------------------


@pytest.mark.parametrize("name", sorted(set(FUNCTIONS) - LOCAL_STATE))
def test_moving_any_declared_layout_path_is_caught(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every layout function but the local state's reaches dvc.yaml: move it, and it differs."""
    original: Callable[..., Path] = getattr(layout, name)

    def moved(*args: Any, **kwargs: Any) -> Path:
        path = original(*args, **kwargs)
        return path.with_name(f"moved-{path.name}")

    monkeypatch.setattr(layout, name, moved)
    assert mismatches(load(REPO), REPO)


@pytest.mark.parametrize("constant", DECLARED_NAMES)
def test_renaming_a_declared_file_is_caught(constant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, constant, f"renamed-{getattr(layout, constant)}")
    assert mismatches(load(REPO), REPO)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("data/raw/${item}:", "data/downloads/${item}:"),
        ("data/tiles/${item}.summary.json", "data/tiles/${item}/summary.json"),
        ("/encoder.safetensors\n", "/encoder.pt\n"),
        ("models/init/${item}.json", "models/init/${item}.provenance.json"),
        ("-s${item.seed}/run.json", "-seed${item.seed}/run.json"),
        ("metrics/evaluate/${item.dataset}/", "metrics/test/${item.dataset}/"),
        ("reports/confusion/", "reports/confusions/"),
        ("      - plots/finetune\n", "      - plots/fine-tune\n"),
        ("      - results:\n", "      - report:\n"),
        ("  - results/results.csv:", "  - results/table.csv:"),
        ("resnet50-sop-0.25-s0.csv: val", "resnet50-sop-0.25-seed0.csv: val"),
    ],
)
def test_editing_a_declared_path_in_dvc_yaml_is_caught(old: str, new: str) -> None:
    text = (REPO / layout.DVC_FILE).read_text()
    assert old in text
    assert mismatches(yaml.safe_load(text.replace(old, new)), REPO)


def test_dropping_or_adding_a_declared_output_is_caught() -> None:
    pipeline = load(REPO)
    dropped = copy.deepcopy(pipeline)
    dropped["stages"]["pretrain"]["outs"].pop()  # provenance.json
    assert mismatches(dropped, REPO)
    added = copy.deepcopy(pipeline)
    added["stages"]["report"]["outs"].append("results/extra.csv")
    assert mismatches(added, REPO)
    extra_stage = copy.deepcopy(pipeline)
    extra_stage["stages"]["export"] = {"cmd": "true", "outs": ["exported"]}
    assert mismatches(extra_stage, REPO)
