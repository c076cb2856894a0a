"""Small pipeline roots for the reliability suite: a tile store linked in, a tiny params.yaml,
and readers of the outputs a stage leaves (its deterministic figures only)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

PRETRAIN_NAME = "resnet_demo-32-0.0"
PRETRAIN_ARGS = ("resnet_demo", "32", "0.0")
FINETUNE_MODEL = "resnet_demo-random"
FINETUNE_CELL = f"{FINETUNE_MODEL}-1.0-s0"
FINETUNE_ARGS = ("landcoverai", FINETUNE_MODEL, "1.0", "0")

# The training figures a resumed run must reproduce; throughput and timings may differ.
PRETRAIN_DETERMINISTIC = ("train_loss", "val_iou", "val_box_iou", "baseline_iou", "epochs")


def project(tmp: Path, store: Path, seed: int = 0) -> Path:
    """A pipeline root whose tile stage is done (``store`` linked in, read-only).

    Pretraining: 8 tiles in batches of 4, 6 epochs = 12 steps, a checkpoint every 3 steps and
    at each epoch's end (steps 2 3 4 6 8 9 10 12). Fine-tuning: 6 training tiles in batches of
    2, 3 epochs = 9 steps, a checkpoint every 2 steps and at each epoch's end.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "data" / "tiles").mkdir(parents=True)
    (tmp / "data" / "tiles" / "landcoverai").symlink_to(store)
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
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("mlruns", ".sop"))
    return target


def set_checkpoint_every(root: Path, steps: int) -> None:
    params = root / "params.yaml"
    params.write_text(
        params.read_text().replace("checkpoint_every: 3", f"checkpoint_every: {steps}")
    )


def pretrain_outputs(root: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(deterministic metrics, provenance, the encoder's sha256)."""
    metrics = json.loads((root / "metrics" / "pretrain" / f"{PRETRAIN_NAME}.json").read_text())
    out = root / "models" / "pretrain" / PRETRAIN_NAME
    provenance = json.loads((out / "provenance.json").read_text())
    encoder = hashlib.sha256((out / "encoder.safetensors").read_bytes()).hexdigest()
    return {k: metrics[k] for k in PRETRAIN_DETERMINISTIC}, provenance, encoder


def finetune_outputs(root: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(deterministic metrics and curve, run record, the best weights' sha256)."""
    metrics = json.loads(
        (root / "metrics" / "finetune" / "landcoverai" / f"{FINETUNE_CELL}.json").read_text()
    )
    with open(root / "plots" / "finetune" / "landcoverai" / f"{FINETUNE_CELL}.csv") as handle:
        curve = [
            {k: v for k, v in row.items() if k != "images_per_second"}
            for row in csv.DictReader(handle)
        ]
    out = root / "models" / "finetune" / "landcoverai" / FINETUNE_CELL
    record = json.loads((out / "run.json").read_text())
    weights = hashlib.sha256((out / "best.safetensors").read_bytes()).hexdigest()
    skip = {"images_per_second", "peak_memory_mb"}
    figures = {k: v for k, v in metrics.items() if k not in skip}
    return {"metrics": figures, "curve": curve}, record, weights


def checkpoints_of(root: Path, stage: str) -> Path:
    """The checkpoint folder of a root's only ``stage`` (pretrain/finetune) run."""
    (folder,) = (root / ".sop" / "checkpoints").glob(f"{stage}-*")
    return folder


def killed(done: subprocess.CompletedProcess[str]) -> bool:
    """The command died of SIGKILL (directly, or relayed as a shell would: 137)."""
    return done.returncode in (-9, 137)
