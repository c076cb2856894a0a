"""The pretrain stage end to end: outputs, MLflow, DDP through torchrun (kills and resumes:
tests/reliability/test_interrupted_training.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline import layout
from pipeline.config import load_params
from pipeline.data.store import TileStore
from pipeline.models.overlap import create_overlap_model
from pipeline.train.engine import evaluate, latest_checkpoint
from pipeline.train.pretrain import OverlapTask, StoreTiles, pretrain_rows

REPO = Path(__file__).resolve().parents[1]
VARIANT = "resnet_demo-32-0.0"  # the stage's one pretext variant: backbone-subimage-jitter
pytestmark = pytest.mark.slow


def project(
    tmp: Path,
    store: Path,
    epochs: int,
    processes: int,
    every: int = 1,
    images: str = "all",
    keep: bool = False,
) -> Path:
    """A pipeline root whose tile stage is done (the session's store, linked in)."""
    tmp.mkdir(parents=True, exist_ok=True)
    tiles = layout.tiles_dir(tmp, "landcoverai")
    tiles.parent.mkdir(parents=True)
    tiles.symlink_to(store)
    (tmp / "params.yaml").write_text(
        f"""seed: 0
data: {{datasets: [landcoverai]}}
pretrain:
  backbones: [resnet_demo]
  images: {images}
  init: none
  source_size: 64
  subimage_sizes: [32]
  color_jitters: [0.0]
  epochs: {epochs}
  batch_size: 4
  lr_backbone: 1.0e-3
  lr_head: 1.0e-3
  weight_decay: 0.0
  warmup_epochs: 1
compute: {{device: cpu, devices: {processes}, checkpoint_every: {every}, loader_workers: 0,
          progress: false, keep_checkpoints: {str(keep).lower()}}}
finetune: {{models: [resnet_demo-random]}}
tracking: {{experiment_prefix: t}}
"""
    )
    return tmp


def stage(root: Path, **popen: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "pretrain.py"), "resnet_demo", "32", "0.0"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,  # type: ignore[arg-type]
    )


def tracked_run(root: Path) -> Any:
    """The project's one pretrain MLflow run."""
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("t-pretrain").experiment_id])
    return run


def finish(process: subprocess.Popen[bytes]) -> str:
    output = process.communicate(timeout=600)[0].decode(errors="replace")
    assert process.returncode == 0, output[-3000:]
    return output


def outputs(root: Path) -> tuple[dict[str, float], dict[str, object], list[dict[str, str]]]:
    metrics = json.loads(layout.pretrain_metrics_path(root, VARIANT).read_text())
    provenance = json.loads(
        (layout.pretrain_dir(root, VARIANT) / layout.PROVENANCE_FILE).read_text()
    )
    with open(layout.pretrain_curve_path(root, VARIANT)) as handle:
        curve = list(csv.DictReader(handle))
    return metrics, provenance, curve


DETERMINISTIC = ("train_loss", "val_iou", "val_box_iou", "baseline_iou", "epochs")


def test_ddp_on_two_cpu_processes_agrees_with_one_process_metrics(
    pretext_store: Path, tmp_path: Path
) -> None:
    root = project(tmp_path, pretext_store, epochs=3, processes=2, keep=True)
    output = finish(stage(root))
    assert "launching 2 DDP processes" in output
    _, provenance, curve = outputs(root)
    assert tracked_run(root).data.tags["run.processes"] == "2.0"
    assert len(curve) == 3
    # Recompute the final validation metrics in this one process from the last checkpoint.
    params = load_params(root / "params.yaml")
    (folder,) = layout.checkpoint_root(root).glob(f"pretrain-{VARIANT}-*")
    state = latest_checkpoint(folder)
    assert state is not None
    assert (state["world_size"], state["step"]) == (2, 6)  # 8 tiles, batches of 4
    torch.manual_seed(0)
    model = create_overlap_model("resnet_demo", 64, 32)
    model.load_state_dict(state["model"])
    store = TileStore(layout.tiles_dir(root, "landcoverai"))
    _, val_rows = pretrain_rows(store, "all", params.seed)
    assert len(val_rows) >= 2  # a share for each rank
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same arithmetic, not only the same sums
    single = evaluate(
        OverlapTask(model, 64, 32),
        model,
        StoreTiles(store, val_rows, size=64),
        torch.device("cpu"),
        2,  # each rank's batch: the same batches, so the same conv arithmetic
    )
    torch.set_num_threads(threads)
    final = provenance["final"]
    assert isinstance(final, dict)
    for key, value in single.items():
        assert final[key] == pytest.approx(value, abs=1e-5), key


def test_the_exported_encoder_is_encoder_a_alone(pretext_store: Path, tmp_path: Path) -> None:
    root = project(tmp_path, pretext_store, epochs=1, processes=1)
    finish(stage(root))
    metrics, provenance, curve = outputs(root)
    weights = load_file(layout.pretrain_dir(root, VARIANT) / layout.ENCODER_FILE)
    encoder = create_overlap_model("resnet_demo", 64, 32).encoder  # type: ignore[union-attr]
    assert set(weights) == set(encoder.state_dict())
    assert not any(k.startswith(("decoder", "subimage_encoder", "project")) for k in weights)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert set(provenance["final"]) >= {"val_iou", "val_box_iou", "baseline_iou"}  # type: ignore[arg-type]
    assert set(metrics) >= {"val_iou", "val_box_iou", "baseline_iou"}
    assert [row["epoch"] for row in curve] == ["1"]
    assert provenance["train_tiles"] == 8
    # The outputs hold what the inputs decide; the commit, the run, speed and memory vary from
    # run to run and are the MLflow run's.
    assert not {"git_commit", "mlflow_run_id", "resumed_from_step"} & set(provenance)
    assert not {"images_per_second", "peak_memory_mb", "processes"} & set(metrics)
    run = tracked_run(root)
    assert run.data.tags["sop.code_commit"] == head  # the pipeline's code; the root is no repo
    assert float(run.data.tags["run.images_per_second"]) > 0
    assert run.data.tags["data.tile_index_sha256"] == provenance["tile_index_sha256"]
    assert run.data.params["pretrain.backbone"] == "resnet_demo"
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "val_iou")
    assert [m.step for m in history] == [1]
    # Single values are tags and summary.json; the metrics are the curves alone.
    assert float(run.data.tags["summary.val_iou"]) == pytest.approx(metrics["val_iou"], abs=1e-4)
    assert {k for k in curve[0] if k != "epoch"} <= set(run.data.metrics)
    assert not [k for k in run.data.metrics if k.startswith(("final.", "run."))]
    assert run.data.params["sop.variant"] == VARIANT.removeprefix("resnet_demo-")
    assert run.info.run_name.startswith("pretrain ")
    assert np.isfinite(metrics["train_loss"])
