"""Where every stage's files live under a project root: the one place that spells the layout.

dvc.yaml declares the same paths (tests/test_layout.py holds them equal); stages, the report,
the CLI and the tests ask this module for them. It depends on nothing of ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

STATE_DIR = ".sop"  # this machine's working state: never a DVC output, never in git
RESULTS_DIR = "results"
PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
LOCK_FILE = "dvc.lock"

# File names inside a stage's output folder.
ENCODER_FILE = "encoder.safetensors"  # a pretrain stage's kept encoder
PROVENANCE_FILE = "provenance.json"  # beside it: where it came from
BEST_WEIGHTS_FILE = "best.safetensors"  # a finetune cell's best epoch
RUN_FILE = "run.json"  # beside it: the cell's training record
SOURCE_FILE = "source.json"  # a download's record of what it fetched
RESULTS_TABLE = "results.csv"
SUMMARY_TABLE = "summary.csv"


class GridCell(Protocol):
    """A fine-tuning cell as the layout needs it: its dataset and its name."""

    @property
    def dataset(self) -> str: ...

    @property
    def name(self) -> str: ...


# --- data ------------------------------------------------------------------------------------


def raw_dir(root: Path, dataset: str) -> Path:
    return root / "data" / "raw" / dataset


def tiles_dir(root: Path, dataset: str) -> Path:
    return root / "data" / "tiles" / dataset


def summary_path(root: Path, dataset: str) -> Path:
    """The tile stage's DVC metrics file (beside the store: DVC forbids outputs inside outputs)."""
    return root / "data" / "tiles" / f"{dataset}.summary.json"


# --- pretraining -----------------------------------------------------------------------------


def pretrain_dir(root: Path, name: str) -> Path:
    """``models/pretrain/<backbone>-<subimage>-<jitter>``: one pretext variant's encoder."""
    return root / "models" / "pretrain" / name


def pretrain_metrics_dir(root: Path) -> Path:
    return root / "metrics" / "pretrain"


def pretrain_metrics_path(root: Path, name: str) -> Path:
    return pretrain_metrics_dir(root) / f"{name}.json"


def pretrain_curve_path(root: Path, name: str) -> Path:
    return root / "plots" / "pretrain" / f"{name}.csv"


# --- fine-tuning and evaluation --------------------------------------------------------------


def init_path(root: Path, model: str) -> Path:
    """``models/init/<backbone>-<init>.safetensors``; its provenance is the same name in .json."""
    return root / "models" / "init" / f"{model}.safetensors"


def cell_dir(root: Path, cell: GridCell) -> Path:
    return root / "models" / "finetune" / cell.dataset / cell.name


def finetune_metrics_dir(root: Path) -> Path:
    return root / "metrics" / "finetune"


def finetune_metrics_path(root: Path, cell: GridCell) -> Path:
    return finetune_metrics_dir(root) / cell.dataset / f"{cell.name}.json"


def finetune_curves_dir(root: Path) -> Path:
    return root / "plots" / "finetune"


def finetune_curve_path(root: Path, cell: GridCell) -> Path:
    return finetune_curves_dir(root) / cell.dataset / f"{cell.name}.csv"


def evaluate_metrics_dir(root: Path) -> Path:
    return root / "metrics" / "evaluate"


def evaluate_metrics_path(root: Path, cell: GridCell) -> Path:
    return evaluate_metrics_dir(root) / cell.dataset / f"{cell.name}.json"


def confusion_path(root: Path, cell: GridCell, suffix: str) -> Path:
    return root / "reports" / "confusion" / cell.dataset / f"{cell.name}{suffix}"


def tile_confusion_dir(root: Path) -> Path:
    return root / "reports" / "tiles"


def tile_confusion_path(root: Path, cell: GridCell) -> Path:
    """A cell's per-tile confusion matrices (the report's bootstrap resamples them)."""
    return tile_confusion_dir(root) / cell.dataset / f"{cell.name}.npz"


def submission_path(root: Path, cell: GridCell) -> Path:
    """A LoveDA cell's test-server submission (the predict stage's zip)."""
    return root / "submissions" / cell.dataset / f"{cell.name}.zip"


def results_dir(root: Path) -> Path:
    return root / RESULTS_DIR


def report_metrics_path(root: Path) -> Path:
    """The report's DVC metrics file: a few headline figures, beside ``results/`` (DVC forbids
    outputs inside outputs)."""
    return root / "metrics" / "report.json"


# --- this machine's state (never DVC outputs) ------------------------------------------------


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def checkpoint_root(root: Path) -> Path:
    """Where every training stage's checkpoint folders live."""
    return state_dir(root) / "checkpoints"


def weights_cache(root: Path) -> Path:
    """Downloaded published weights, kept across runs."""
    return state_dir(root) / "weights"
