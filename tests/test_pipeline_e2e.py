"""Slow tier: the flows through Prefect and MLflow, and the demo through DVC."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from pipeline import layout, tracking
from pipeline.config import params_from_mapping
from pipeline.data.store import TileStore
from pipeline.flows.data import download_flow, tile_flow
from pipeline.flows.finetune import Cell
from pipeline.synthetic import SyntheticArchive

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_download_and_tile_flows(small_archive: SyntheticArchive, tmp_path: Path) -> None:
    params = params_from_mapping(
        {
            "data": {
                "sources": {
                    "landcoverai": {"url": str(small_archive.path), "md5": small_archive.md5}
                },
                "workers": 2,
            }
        }
    )
    raw = download_flow("landcoverai", params, tmp_path)
    assert (raw / "extracted" / "landcover.ai.v1" / "images").is_dir()
    summary = tile_flow("landcoverai", params, tmp_path)
    n_tiles = sum(len(ids) for ids in small_archive.splits.values())
    assert summary["tiles"] == n_tiles
    tiles = TileStore(layout.tiles_dir(tmp_path, "landcoverai"))
    assert len(tiles) == n_tiles
    assert json.loads(layout.summary_path(tmp_path, "landcoverai").read_text()) == summary

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for stage in ("download", "tile"):
        experiment = client.get_experiment_by_name(f"sop-{stage}")
        assert experiment is not None
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == f"{stage} · landcoverai"
        assert run.info.status == "FINISHED"
    (tile_run,) = client.search_runs([client.get_experiment_by_name("sop-tile").experiment_id])
    assert tile_run.data.metrics["tiles"] == n_tiles
    assert tile_run.data.tags["data.tile_index_sha256"]

    # A rerun finds everything done: same store, untouched.
    index = layout.tiles_dir(tmp_path, "landcoverai") / "index.parquet"
    before = index.stat().st_mtime_ns
    tile_flow("landcoverai", params, tmp_path)
    assert index.stat().st_mtime_ns == before


def test_wrong_md5_stops_the_download_flow(small_archive: SyntheticArchive, tmp_path: Path) -> None:
    from pipeline.errors import ChecksumError

    params = params_from_mapping(
        {"data": {"sources": {"landcoverai": {"url": str(small_archive.path), "md5": "0" * 32}}}}
    )
    with pytest.raises(ChecksumError, match=r"data\.sources"):
        download_flow("landcoverai", params, tmp_path)
    assert not (layout.raw_dir(tmp_path, "landcoverai") / "extracted").exists()


def dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_demo_pipeline_with_dvc(tmp_path: Path) -> None:
    """The demo's DVC pipeline on a copy of the project, as `make demo` runs it (`sop repro`:
    the Prefect `paper` flow under one MLflow parent run), then nothing left to do."""
    project = tmp_path / "project"
    for item in ("pipeline", "stages"):
        shutil.copytree(REPO / item, project / item, ignore=shutil.ignore_patterns("__pycache__"))
    demo = project / "demo"
    demo.mkdir()
    params = yaml.safe_load((REPO / "demo" / "params.yaml").read_text())
    params["synthetic"].update(scenes=2, height=1100, width=1200)
    # 8 tiles: a smoke run of the stage, the ViT's longer schedule too
    params["pretrain"].update(epochs=2, batch_size=2, backbone_epochs={})
    # Two epochs of pretraining learn no more than the position prior: the gate would refuse.
    params["finetune"].update(epochs=2, batch_size=2, input_size=128, sop_gate=False)
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "demo" / "dvc.yaml", demo / "dvc.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(demo, "init", "--subdir", "-q")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sop"), "repro", "--params", "demo/params.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # One Prefect server for the whole grid: no stage started its own.
    assert (result.stdout + result.stderr).count("Starting temporary server") <= 1
    store = TileStore(layout.tiles_dir(demo, "landcoverai"))
    assert len(store) > 0
    assert store.meta.label_fractions == (1.0, 0.5, 0.25)
    assert (demo / "mlflow.db").exists()
    assert "up to date" in dvc(demo, "status")
    summary = json.loads(layout.summary_path(demo, "landcoverai").read_text())
    assert summary["tiles"] == len(store)
    for backbone in params["pretrain"]["backbones"]:
        name = f"{backbone}-56-0.0"  # the demo's one pretext variant
        assert (layout.pretrain_dir(demo, name) / layout.ENCODER_FILE).exists()
        metrics = json.loads(layout.pretrain_metrics_path(demo, name).read_text())
        assert metrics["epochs"] == 2
    assert "val_iou" in dvc(demo, "metrics", "show")
    _check_downstream(demo, params)
    _check_restored_from_the_run_cache(demo)
    # Where training runs is not what it computes: no stage goes stale.
    params["compute"]["loader_workers"] = 1
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "up to date" in dvc(demo, "status")
    # A pretrain param makes exactly the pretrain stages stale.
    params["pretrain"]["epochs"] = 3
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc(demo, "status")
    assert "pretrain@resnet_demo-56-0.0" in status
    assert "tile@landcoverai" not in status
    params["pretrain"]["epochs"] = 2
    # A fine-tuning param makes the grid stale, not its starting weights nor pretraining.
    params["finetune"]["epochs"] = 3
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc(demo, "status")
    assert "finetune@landcoverai-resnet_demo-random-0.5-0" in status
    assert "weights@" not in status
    assert "pretrain@" not in status
    params["finetune"]["epochs"] = 2
    # A new seed (or model, fraction, dataset, pretext variant) adds cells: the existing
    # ones stay up to date, since a cell's identity reaches its stage through the cmd.
    params["finetune"]["seeds"] = [0, 1]
    params["pretrain"]["color_jitters"] = [0.0, 0.4]
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    stale = [line.rstrip(":") for line in dvc(demo, "status").splitlines() if "@" in line]
    assert "finetune@landcoverai-resnet_demo-sop-0.25-1" in stale
    assert "pretrain@vit_tiny_demo-56-0.4" in stale
    assert not [s for s in stale if s.startswith(("finetune@", "evaluate@")) and s.endswith("-0")]
    assert not [s for s in stale if s.startswith("pretrain@") and s.endswith("-0.0")]
    params["finetune"]["seeds"], params["pretrain"]["color_jitters"] = [0], [0.0]
    # A changed tiling param makes exactly the tile stage stale.
    params["data"]["subset_seed"] = 1
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc(demo, "status")
    assert "tile@landcoverai" in status
    assert "download@landcoverai" not in status


def _check_restored_from_the_run_cache(demo: Path) -> None:
    """A cell's stages entered DVC's run-cache: with dvc.lock and their outputs gone (a fresh
    checkout's state), `dvc repro` restores them byte for byte without running them."""
    cell = Cell("landcoverai", "resnet_demo-sop", 0.25, 0)
    outputs = [
        layout.cell_dir(demo, cell) / layout.BEST_WEIGHTS_FILE,
        layout.cell_dir(demo, cell) / layout.RUN_FILE,
        layout.finetune_metrics_path(demo, cell),
        layout.finetune_curve_path(demo, cell),
        layout.evaluate_metrics_path(demo, cell),
        layout.confusion_path(demo, cell, ".png"),
    ]
    before = {path: path.read_bytes() for path in outputs}
    lock = demo / "dvc.lock"
    kept = lock.read_text()
    lock.unlink()
    for path in outputs:
        path.unlink()
    stages = [f"{stage}@landcoverai-resnet_demo-sop-0.25-0" for stage in ("finetune", "evaluate")]
    log = dvc(demo, "repro", "--single-item", *stages)
    for stage in stages:
        assert f"Stage '{stage}' is cached - skipping run" in log, log
    assert "Running stage" not in log, log
    assert {path: path.read_bytes() for path in outputs} == before
    lock.write_text(kept)


def _check_downstream(demo: Path, params: dict[str, Any]) -> None:
    """Every model at every fraction: curves, best checkpoint, test metrics, one MLflow run."""
    cells = [
        Cell("landcoverai", model, float(fraction), 0)
        for model in params["finetune"]["models"]
        for fraction in params["data"]["label_fractions"]
    ]
    assert len(cells) == 12  # both backbones, random and SOP, at 3 fractions
    results = layout.results_dir(demo)
    client = mlflow.MlflowClient(f"sqlite:///{demo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sop-demo")
    assert experiment is not None
    every = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in every if r.data.tags.get("sop.stage") == "grid"]
    assert parent.info.status == "FINISHED"
    children = [r for r in every if r.info.run_id != parent.info.run_id]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parent.info.run_id}
    # A child run per DVC stage, named by DVC itself.
    stages = dvc(demo, "stage", "list", "--name-only").split()
    assert sorted(r.data.tags["dvc.stage"] for r in children) == sorted(stages)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, layout.RESULTS_DIR)}
    assert {
        f"{layout.RESULTS_DIR}/report.md",
        f"{layout.RESULTS_DIR}/{layout.RESULTS_TABLE}",
    } <= logged
    assert any(path.endswith(".png") for path in logged)
    assert parent.data.metrics["results.cells"] == len(cells)
    finetunes = [r for r in children if r.data.tags.get("sop.stage") == "finetune"]
    runs = {
        f"landcoverai-{r.data.tags['sop.backbone']}-{r.data.tags['sop.init']}-"
        f"{r.data.tags['sop.fraction']}-s{r.data.tags['sop.seed']}": r
        for r in finetunes
    }
    tiles = []
    for cell in cells:
        record = json.loads((layout.cell_dir(demo, cell) / layout.RUN_FILE).read_text())
        assert (layout.cell_dir(demo, cell) / layout.BEST_WEIGHTS_FILE).exists()
        curve = layout.finetune_curve_path(demo, cell).read_text().splitlines()
        assert curve[0].startswith("epoch,train_loss,val_miou")
        assert len(curve) == 1 + 2  # a row per epoch
        test = json.loads(layout.evaluate_metrics_path(demo, cell).read_text())
        assert test["split"] == "test"
        assert 0.0 <= test["test_miou"] <= 1.0
        confusion = json.loads(layout.confusion_path(demo, cell, ".json").read_text())
        assert len(confusion["matrix"]) == 5
        assert layout.confusion_path(demo, cell, ".png").read_bytes()[:4] == b"\x89PNG"
        assert layout.tile_confusion_path(demo, cell).is_file()
        run = client.get_run(runs[f"landcoverai-{cell.name}"].info.run_id)
        # Evaluate found this run by the weights it evaluated.
        assert run.data.tags["sop.weights_sha256"] == record["weights_sha256"]
        assert (test["init"], test["seed"]) == (record["init"], 0)
        assert float(run.data.tags["summary.test_miou"]) == pytest.approx(test["test_miou"])
        assert run.info.run_name == tracking.run_label("finetune", cell.identity())
        assert not {"fraction", "seed"} & {k.rsplit(".", 1)[-1] for k in run.data.metrics}
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert [m.step for m in history] == [1, 2]
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
        assert f"evaluation/{cell.name}.png" in artifacts
        tiles.append(record["metrics"]["train_tiles"])
    table = (results / layout.RESULTS_TABLE).read_text().splitlines()
    assert len(table) == 1 + len(cells)
    # The report, DVC's metrics and MLflow agree on every cell's test mIoU.
    shown = json.loads(dvc(demo, "metrics", "show", "--json"))
    dvc_miou = {
        Path(path).stem: figures["data"]["test_miou"]
        for path, figures in next(iter(shown.values()))["data"].items()
        if Path(path).is_relative_to(layout.evaluate_metrics_dir(Path()))
    }
    with open(results / layout.RESULTS_TABLE, newline="") as handle:
        for row in csv.DictReader(handle):
            name = Path(row["cell"]).name
            assert float(row["test_miou"]) == pytest.approx(dvc_miou[name], abs=1e-9)
            assert float(row["test_miou"]) == pytest.approx(
                float(runs[f"landcoverai-{name}"].data.tags["summary.test_miou"]), abs=1e-6
            )
    assert table[0].startswith("dataset,backbone,init,label_fraction,seed,best_val_miou")
    report = (results / "report.md").read_text()
    assert "SOP reaches better test mIoU than the best other init" in report
    assert "tile bootstrap, " in report
    assert "## Metrics" in report
    assert "test_miou_lo,test_miou_hi" in table[0]
    assert (results / "curves_landcoverai_resnet_demo.png").exists()
    # Fewer labels, fewer tiles; the same subsets for every model (3 fractions each).
    assert all(tiles[i : i + 3] == tiles[:3] for i in range(0, len(tiles), 3))
    assert tiles[0] > tiles[2]
