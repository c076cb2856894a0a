"""Small pipeline roots for the reliability suite: a tile store linked in, a tiny params.yaml,
and readers of the outputs a stage leaves (every one the same bytes for the same inputs)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import layout

PRETRAIN_NAME = "resnet_demo-32-0.0"
PRETRAIN_ARGS = ("resnet_demo", "32", "0.0")
FINETUNE_MODEL = "resnet_demo-random"
FINETUNE_CELL = f"{FINETUNE_MODEL}-1.0-s0"
FINETUNE_ARGS = ("landcoverai", FINETUNE_MODEL, "1.0", "0")


class Named(NamedTuple):
    """A fine-tuning cell as the layout names its files (the flows' ``Cell`` has both fields)."""

    dataset: str
    name: str


HERE = Path()  # the layout's paths relative to a root


def project(tmp: Path, store: Path, seed: int = 0) -> Path:
    """A pipeline root whose tile stage is done (``store`` linked in, read-only).

    Pretraining: 8 tiles in batches of 4, 6 epochs = 12 steps, a checkpoint every 3 steps and
    at each epoch's end (steps 2 3 4 6 8 9 10 12). Fine-tuning: 6 training tiles in batches of
    2, 3 epochs = 9 steps, a checkpoint every 2 steps and at each epoch's end.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    tiles = layout.tiles_dir(tmp, "landcoverai")
    tiles.parent.mkdir(parents=True)
    tiles.symlink_to(store)
    (tmp / "params.yaml").write_text(
        f"""seed: {seed}
data: {{datasets: [landcoverai], label_fractions: [1.0]}}
pretrain:
  backbones: [resnet_demo]
  images: all
  init: none
  source_size: 64
  subimage_sizes: [32]
  color_jitters: [0.0]
  epochs: 6
  batch_size: 4
  lr_backbone: 1.0e-3
  lr_head: 1.0e-3
  weight_decay: 0.0
  warmup_epochs: 1
finetune:
  datasets: [landcoverai]
  models: [{FINETUNE_MODEL}]
  seeds: [0]
  input_size: 128
  epochs: 3
  batch_size: 2
  lr_backbone: 1.0e-3
  lr_head: 1.0e-3
  weight_decay: 0.0
  warmup_epochs: 1
compute: {{device: cpu, devices: 1, checkpoint_every: 3, loader_workers: 0, progress: false,
          keep_checkpoints: false}}
tracking: {{experiment_prefix: t}}
"""
    )
    return tmp


def store_with_labels(source: Path, target: Path) -> Path:
    """A copy of a session store whose training split is the 1.0 label subset (fine-tuning
    reads its fraction's column)."""
    from pipeline.data.store import add_label_fractions, read_index, write_index

    shutil.copytree(source, target)
    index, meta = read_index(target)
    meta = dataclasses.replace(meta, label_fractions=(1.0,))
    labelled = add_label_fractions(index, len(meta.class_names), meta.ignore_index, (1.0,), 0)
    write_index(target, labelled, meta)
    return target


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a root (its store link kept as a link), MLflow and Prefect state left behind."""
    shutil.copytree(
        source, target, symlinks=True, ignore=shutil.ignore_patterns("mlruns", layout.STATE_DIR)
    )
    return target


def set_checkpoint_every(root: Path, steps: int) -> None:
    params = root / "params.yaml"
    params.write_text(
        params.read_text().replace("checkpoint_every: 3", f"checkpoint_every: {steps}")
    )


def _posix(*paths: Path) -> tuple[str, ...]:
    return tuple(path.as_posix() for path in paths)


PRETRAIN_FILES = _posix(
    layout.pretrain_dir(HERE, PRETRAIN_NAME) / layout.ENCODER_FILE,
    layout.pretrain_dir(HERE, PRETRAIN_NAME) / layout.PROVENANCE_FILE,
    layout.pretrain_metrics_path(HERE, PRETRAIN_NAME),
    layout.pretrain_curve_path(HERE, PRETRAIN_NAME),
)
_CELL = Named("landcoverai", FINETUNE_CELL)
FINETUNE_FILES = _posix(
    layout.cell_dir(HERE, _CELL) / layout.BEST_WEIGHTS_FILE,
    layout.cell_dir(HERE, _CELL) / layout.RUN_FILE,
    layout.finetune_metrics_path(HERE, _CELL),
    layout.finetune_curve_path(HERE, _CELL),
)


def digests(root: Path, files: tuple[str, ...]) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files}


def pretrain_outputs(root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(the final metrics, the sha256 of every output DVC tracks): a resumed or repeated run
    must write the same bytes."""
    metrics = json.loads((root / PRETRAIN_FILES[2]).read_text())
    return metrics, digests(root, PRETRAIN_FILES)


def finetune_outputs(root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(the metrics and curve, the sha256 of every output DVC tracks)."""
    metrics = json.loads((root / FINETUNE_FILES[2]).read_text())
    with open(root / FINETUNE_FILES[3]) as handle:
        curve = list(csv.DictReader(handle))
    return {"metrics": metrics, "curve": curve}, digests(root, FINETUNE_FILES)


def resumed_from_step(done: subprocess.CompletedProcess[str]) -> int | None:
    """The step a stage said it resumed from; None: it started afresh."""
    steps = re.findall(r"resumed from step (\d+)", done.stdout + done.stderr)
    return int(steps[-1]) if steps else None


def checkpoints_of(root: Path, stage: str) -> Path:
    """The checkpoint folder of a root's only ``stage`` (pretrain/finetune) run."""
    (folder,) = layout.checkpoint_root(root).glob(f"{stage}-*")
    return folder


def killed(done: subprocess.CompletedProcess[str]) -> bool:
    """The command died of SIGKILL (directly, or relayed as a shell would: 137)."""
    return done.returncode in (-9, 137)
