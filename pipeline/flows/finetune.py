"""The downstream flows: starting weights, fine-tuning, evaluation; one grid cell at a time.

A model is ``<backbone>-<init>`` (``resnet50-seco``); a grid cell is (dataset, model, label
fraction, seed), named ``<model>-<fraction>-s<seed>`` under its dataset. Outputs (DVC tracks them):

- ``weights``: ``models/init/<model>.safetensors``: the init's encoder in the backbone's exact
  layout (random weights from the seed; published weights fetched, verified and loaded with
  every missing and unexpected key reported; SOP: a pretrain stage's encoder, refused unless its
  pretext val_iou beats the centred-box baseline by ``finetune.sop_gate_margin``), and
  ``<model>.json``, its provenance and load report.
- ``finetune``: ``models/finetune/<dataset>/<cell>/best.safetensors`` (the best-validation
  epoch's segmenter) and ``run.json``; ``metrics/finetune/<dataset>/<cell>.json``; the per-epoch
  curves ``plots/finetune/<dataset>/<cell>.csv``.
- ``evaluate``: ``metrics/evaluate/<dataset>/<cell>.json`` (mIoU, per-class IoU and per-image
  mIoU on the test split), ``reports/confusion/<dataset>/<cell>.json`` and ``.png``, and each
  tile's own matrix in ``reports/tiles/<dataset>/<cell>.npz`` (the report's intervals).

Every metrics file carries the cell's identity (dataset, backbone, init, fraction, seed), so the
report never parses names. Each flow opens its MLflow run; evaluate also adds its figures and the
confusion matrix to the cell's fine-tuning run, so one run holds the cell's curves, best
checkpoint and test results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from prefect import flow

from pipeline import layout, tracking
from pipeline.config import Params
from pipeline.data import store as tile_store
from pipeline.errors import DataError, ParamsError
from pipeline.flows.common import (
    portable_path,
    tracked_run,
    write_json,
)
from pipeline.flows.training import TrainingStage, run_training_stage
from pipeline.intervals import TileConfusion, per_image_miou
from pipeline.models.backbones import create_backbone
from pipeline.models.inits import INITS, init_state, load_init, normalisation_for
from pipeline.models.weights import WeightsError, save_encoder
from pipeline.report import PretextCheck, plot_confusion, pretext_check
from pipeline.train.finetune import FinetuneJob, evaluate_weights
from pipeline.train.jobs import resolve_device, resolve_processes
from pipeline.transfer import file_digest
from pipeline.zoo import base_init, parse_sop, sop_run, sop_stage, sop_variant, split_model

NO_TEST_LABELS = (
    "{dataset} has no labelled test tiles (LoveDA keeps its test labels hidden): evaluated on "
    "the val split, which also selected the best epoch, so the figure is optimistic"
)


@dataclass(frozen=True)
class Cell:
    """One grid cell, as the finetune and evaluate stages' matrix items name it."""

    dataset: str
    model: str  # <backbone>-<init>
    fraction: float
    seed: int

    @property
    def backbone(self) -> str:
        return split_model(self.model)[0]

    @property
    def init(self) -> str:
        return split_model(self.model)[1]

    @property
    def name(self) -> str:
        """``vits14-sop-0.25-s0``; DVC renders the fraction as Python's str of the float."""
        return f"{self.model}-{float(self.fraction)}-s{self.seed}"

    def identity(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "backbone": self.backbone,
            "init": self.init,
            "fraction": float(self.fraction),
            "seed": self.seed,
        }


# --- what each stage reads (its DVC params; tests/test_dvc_declarations.py holds them equal) --


def weights_section(params: Params, model: str) -> dict[str, Any]:
    f = params.finetune
    init = split_model(model)[1]
    section: dict[str, Any] = {
        "seed": params.seed,
        "finetune": {
            "model": model,
            "input_size": f.input_size_of(split_model(model)[0]),
            "backbone_input_size": f.backbone_input_size,
            "weights_file": f.weights_file.get(base_init(init)),
        },
    }
    if base_init(init) == "sop":
        section["finetune"] |= {"sop_gate": f.sop_gate, "sop_gate_margin": f.sop_gate_margin}
    # A sweep's init names its own pretrain run (in the cmd); sop and the ablations name a
    # pretext variant, plain sop through the two lists.
    if base_init(init) == "sop" and not parse_sop(init).swept:
        section["pretrain"] = {"pretext_variant": sop_variant(init, params.pretrain.main_variant)}
    return section


FINETUNE_KEYS = (
    "input_size",
    "epochs",
    "batch_size",
    "lr_backbone",
    "lr_head",
    "weight_decay",
    "warmup_epochs",
    "flips",
    "rot90",
    "window_overlap",
    "convergence_threshold",
)
EVALUATE_KEYS = ("input_size", "window_overlap")


def finetune_section(params: Params, cell: Cell) -> dict[str, Any]:
    f = params.finetune.model_dump(mode="json")
    section = {k: f[k] for k in FINETUNE_KEYS}
    section |= {
        "dataset": cell.dataset,
        "model": cell.model,
        "fraction": float(cell.fraction),
        "seed": cell.seed,
        "input_size": params.finetune.input_size_of(cell.backbone),
        "backbone_input_size": params.finetune.backbone_input_size,
        "normalisation": params.finetune.normalisation_of(cell.init),
    }
    return {"finetune": section, "compute": params.compute.model_dump()}


def evaluate_section(params: Params, cell: Cell) -> dict[str, Any]:
    f = params.finetune.model_dump(mode="json")
    section = {k: f[k] for k in EVALUATE_KEYS}
    section |= {
        "dataset": cell.dataset,
        "model": cell.model,
        "fraction": float(cell.fraction),
        "seed": cell.seed,
        "input_size": params.finetune.input_size_of(cell.backbone),
        "backbone_input_size": params.finetune.backbone_input_size,
        "normalisation": params.finetune.normalisation_of(cell.init),
    }
    return {"finetune": section, "compute.device": params.compute.device}


def _check_cell(params: Params, cell: Cell) -> None:
    f = params.finetune
    if cell.model not in f.models:
        raise ParamsError(f"finetune.models: {cell.model!r} is not one of {f.models}")
    if cell.dataset not in f.datasets:
        raise ParamsError(f"finetune.datasets: {cell.dataset!r} is not one of {f.datasets}")
    if cell.dataset not in params.data.datasets:
        raise ParamsError(
            f"finetune.datasets: {cell.dataset!r} is not in data.datasets {params.data.datasets}"
        )


# --- weights ---------------------------------------------------------------------------------


@flow(name="weights", flow_run_name="weights-{model}", log_prints=True)
def weights_flow(model: str, params: Params, root: Path) -> dict[str, Any]:
    """Materialise ``model``'s starting encoder (``<backbone>-<init>``) as a strict-loading
    file."""
    f = params.finetune
    if model not in f.models:
        raise ParamsError(f"finetune.models: {model!r} is not one of {f.models}")
    backbone, init = split_model(model)
    kind = base_init(init)
    main = params.pretrain.main_variant
    sop_name = sop_run(backbone, init, main) if kind == "sop" else None
    sop_encoder = layout.pretrain_dir(root, sop_name or backbone) / layout.ENCODER_FILE
    weights_file = f.weights_file.get(kind)
    if sop_name is not None and weights_file is None and not sop_encoder.is_file():
        raise WeightsError(
            f"{model}: no pretrained encoder at {sop_encoder}; run its pretrain stage "
            f"(dvc repro {sop_stage(backbone, init, main)}) or set finetune.weights_file.sop"
        )
    # A local file (weights_file.sop) is not a pretrain stage's encoder: it has no pretext figures.
    stage = sop_stage(backbone, init, main) if sop_name else ""
    gate = sop_gate(params, root, sop_name, stage) if sop_name and weights_file is None else None
    out = layout.init_path(root, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    identity = {"backbone": backbone, "init": init}
    with tracked_run("weights", params, root, identity, weights_section(params, model)):
        import mlflow

        state, source = init_state(
            kind,
            backbone,
            weights_file=Path(weights_file) if weights_file else None,
            sop_encoder=sop_encoder,
            cache_dir=layout.weights_cache(root),
            timeout_s=params.data.download.timeout_s,
            progress=params.compute.progress,
        )
        # The seed decides the random init (and nothing else here).
        torch.manual_seed(params.seed)
        encoder = create_backbone(backbone, f.input_size_of(backbone))
        report = None if state is None else load_init(encoder, backbone, state, source)
        save_encoder(encoder, out, {"init": init, "backbone": backbone})
        own = normalisation_for(kind, "own")
        provenance = {
            "model": model,
            "init": init,
            "backbone": backbone,
            "source": source.replace(str(sop_encoder), str(portable_path(sop_encoder, root))),
            "description": INITS[kind].description,
            "sha256": file_digest(out, "sha256"),
            "loaded_tensors": None if report is None else report.loaded,
            "missing_keys": [] if report is None else list(report.missing),
            "unexpected_keys": [] if report is None else list(report.unexpected),
            "own_normalisation": {"mean": list(own.mean), "std": list(own.std)},
            "input_size": f.input_size_of(backbone),
        }
        if sop_name is not None:
            provenance["pretrain_provenance"] = _read_json(
                layout.pretrain_dir(root, sop_name) / layout.PROVENANCE_FILE
            )
        if gate is not None:
            provenance["sop_gate"] = _gate_record(gate, f.sop_gate_margin, root)
            mlflow.log_metrics(
                {"pretext_val_iou": gate.val_iou, "pretext_baseline_iou": gate.baseline_iou}
            )
        write_json(out.with_suffix(".json"), provenance)
        mlflow.log_dict(provenance, "weights.json")
        if report is not None:
            mlflow.log_metric("loaded_tensors", report.loaded)
            mlflow.log_metric("unexpected_keys", len(report.unexpected))
    unexpected = [] if report is None else list(report.unexpected)
    extra = f", {len(unexpected)} unexpected keys ignored: {unexpected[:5]}" if unexpected else ""
    print(f"{init} for {backbone}: {source}{extra} -> {out}")
    return provenance


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def sop_gate(params: Params, root: Path, sop_name: str, stage: str) -> PretextCheck | None:
    """The pretext figures of the SOP encoder ``sop_name`` (written by DVC stage ``stage``),
    refused (DataError) unless its val_iou beats the centred-box baseline by
    ``finetune.sop_gate_margin``; None when off."""
    f = params.finetune
    if not f.sop_gate:
        return None
    path = layout.pretrain_metrics_path(root, sop_name)
    if not path.is_file():
        raise DataError(
            f"{path}: no pretext metrics for the SOP encoder; run `dvc repro {stage}` "
            "(or set finetune.sop_gate: false)"
        )
    check = pretext_check(path)
    if not check.passes(f.sop_gate_margin):
        raise DataError(
            f"{path}: val_iou {check.val_iou:g} does not beat the centred-box baseline_iou "
            f"{check.baseline_iou:g} by finetune.sop_gate_margin {f.sop_gate_margin:g}: the SOP "
            "encoder learned little beyond the position prior (finetune.sop_gate: false to use it)"
        )
    return check


def _gate_record(check: PretextCheck, margin: float, root: Path) -> dict[str, Any]:
    path = layout.pretrain_metrics_path(root, check.run)
    return {
        "metrics": portable_path(path, root),
        "val_iou": check.val_iou,
        "baseline_iou": check.baseline_iou,
        "margin": margin,
    }


# --- finetune --------------------------------------------------------------------------------


def finetune_fingerprint(params: Params, cell: Cell, index_sha256: str, weights_sha256: str) -> str:
    section = finetune_section(params, cell)
    section.pop("compute")
    section["compute.device"] = params.compute.device
    text = json.dumps(
        {"section": section, "tiles": index_sha256, "weights": weights_sha256}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finetune_metrics(cell: Cell, threshold: float, result: dict[str, Any]) -> dict[str, Any]:
    """The cell's DVC metrics: its best epoch's validation figures and its convergence."""
    history = result["history"]
    best = next(row for row in history if int(row["epoch"]) == result["best_epoch"])
    return {
        **cell.identity(),
        "best_val_miou": best["val_miou"],
        "best_epoch": result["best_epoch"],
        "convergence_epoch": result["convergence_epoch"],
        "convergence_threshold": threshold,
        "final_val_miou": history[-1]["val_miou"],
        "epochs": int(history[-1]["epoch"]),
        **{f"best_{k}": v for k, v in best.items() if k.startswith("val_iou_")},
        "train_tiles": result["train_tiles"],
        "val_tiles": result["val_tiles"],
    }


@flow(name="finetune", flow_run_name="finetune-{cell.dataset}-{cell.name}", log_prints=True)
def finetune_flow(cell: Cell, params: Params, root: Path) -> dict[str, Any]:
    """Fine-tune the cell's backbone from its init on its fraction of the training labels."""
    _check_cell(params, cell)
    f = params.finetune
    tiles = layout.tiles_dir(root, cell.dataset)
    if not (tiles / tile_store.INDEX_FILE).exists():
        raise DataError(f"{tiles}: no tile store; run the tile stage for {cell.dataset} first")
    weights = layout.init_path(root, cell.model)
    if not weights.exists():
        raise DataError(
            f"{weights}: no starting weights; run `dvc repro weights@{cell.model}` first"
        )
    index_sha256 = tile_store.index_hash(tiles)
    weights_sha256 = file_digest(weights, "sha256")
    key = finetune_fingerprint(params, cell, index_sha256, weights_sha256)
    out = layout.cell_dir(root, cell)
    run_name = f"{cell.dataset}-{cell.name}"
    stage = TrainingStage(
        "finetune", cell.identity(), finetune_section(params, cell), index_sha256,
        layout.checkpoint_root(root) / f"finetune-{cell.dataset}-{cell.name}-{key}", out,
        layout.finetune_curve_path(root, cell),
    )  # fmt: skip

    def job_for(tracking_uri: str, run_id: str) -> FinetuneJob:
        return FinetuneJob(
            params, cell.backbone, cell.init, float(cell.fraction), cell.seed, weights,
            tiles, out, stage.checkpoints, tracking_uri, run_id,
        )  # fmt: skip

    def outputs(result: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
        metrics = finetune_metrics(cell, f.convergence_threshold, result)
        best_sha256 = file_digest(out / layout.BEST_WEIGHTS_FILE, "sha256")
        run_record = {
            "cell": cell.name,
            "model": cell.model,
            **cell.identity(),
            "weights": layout.BEST_WEIGHTS_FILE,
            "weights_sha256": best_sha256,
            "init_weights_sha256": weights_sha256,
            "tile_index_sha256": index_sha256,
            "steps": result["steps"],
            "metrics": metrics,
        }
        import mlflow

        # The evaluate stage finds this run by the weights it evaluates.
        mlflow.set_tag(tracking.WEIGHTS_TAG, best_sha256)
        write_json(out / layout.RUN_FILE, run_record)
        write_json(layout.finetune_metrics_path(root, cell), metrics)
        return metrics, [out / layout.RUN_FILE]

    metrics = run_training_stage(stage, params, root, resolve_processes(params), job_for, outputs)
    converged = metrics["convergence_epoch"]
    print(
        f"{run_name}: best val mIoU {metrics['best_val_miou']:.3f} "
        f"at epoch {metrics['best_epoch']}; "
        + (
            f"reached {f.convergence_threshold:g} at epoch {converged}"
            if converged is not None
            else f"never reached {f.convergence_threshold:g}"
        )
    )
    return metrics


# --- evaluate --------------------------------------------------------------------------------


def evaluation_rows(
    store: tile_store.TileStore, dataset: str
) -> tuple[str, npt.NDArray[np.int64], str | None]:
    """(split, rows, note): the test split, or val where test labels are hidden (LoveDA)."""
    rows = store.rows("test")
    if len(rows):
        return "test", rows, None
    rows = store.rows("val")
    if len(rows) == 0:
        raise DataError(f"{store.directory}: no labelled test or val tiles to evaluate on")
    return "val", rows, NO_TEST_LABELS.format(dataset=dataset)


@flow(name="evaluate", flow_run_name="evaluate-{cell.dataset}-{cell.name}", log_prints=True)
def evaluate_flow(cell: Cell, params: Params, root: Path) -> dict[str, Any]:
    """The best-validation checkpoint of a cell on the test split, whole tiles."""
    _check_cell(params, cell)
    f = params.finetune.for_backbone(cell.backbone)
    out = layout.cell_dir(root, cell)
    if not (out / layout.RUN_FILE).exists():
        raise DataError(
            f"{out / layout.RUN_FILE}: not fine-tuned yet; run the finetune stage first"
        )
    record = json.loads((out / layout.RUN_FILE).read_text())
    tiles = layout.tiles_dir(root, cell.dataset)
    store = tile_store.TileStore(tiles)
    meta = store.meta
    split, rows, note = evaluation_rows(store, cell.dataset)
    run_name = f"{cell.dataset}-{cell.name}"
    with tracked_run(
        "evaluate",
        params,
        root,
        cell.identity(),
        evaluate_section(params, cell),
        record.get("tile_index_sha256"),
    ):
        import mlflow

        device = torch.device(resolve_device(params))
        evaluation = evaluate_weights(
            store, rows, cell.backbone, cell.init, out / layout.BEST_WEIGHTS_FILE, f, device
        )
        matrix = evaluation.matrix
        tile_confusion = TileConfusion(
            evaluation.per_tile.numpy(),
            rows.astype(np.int64),
            tuple(meta.class_names),
            evaluation.evaluated_classes,
            meta.ignore_index,
        )
        figures = {**evaluation.figures, "test_miou_per_image": per_image_miou(tile_confusion)}
        metrics: dict[str, Any] = {
            **cell.identity(),
            **figures,
            "split": split,
            "tiles": len(rows),
            "best_epoch": record["metrics"]["best_epoch"],
            "best_val_miou": record["metrics"]["best_val_miou"],
            "convergence_epoch": record["metrics"]["convergence_epoch"],
        }
        if note:
            metrics["note"] = note
        confusion = {
            "split": split,
            "classes": list(meta.class_names),
            "evaluated_classes": list(evaluation.evaluated_classes),
            "ignore_index": meta.ignore_index,
            "rows": "true class",
            "columns": "predicted class",
            "matrix": matrix.tolist(),
        }
        write_json(layout.evaluate_metrics_path(root, cell), metrics)
        tile_confusion.write(layout.tile_confusion_path(root, cell))
        json_file = layout.confusion_path(root, cell, ".json")
        png_file = layout.confusion_path(root, cell, ".png")
        write_json(json_file, confusion)
        plot_confusion(matrix.numpy(), meta.class_names, png_file, title=f"{run_name} ({split})")
        numbers = {k: float(v) for k, v in figures.items() if v == v}  # NaN: class absent
        mlflow.log_metrics(numbers)
        mlflow.log_artifact(str(json_file))
        mlflow.log_artifact(str(png_file))
        _add_to_finetune_run(record["weights_sha256"], numbers, [json_file, png_file], split, note)
    message = f"{run_name}: {split} mIoU {figures['test_miou']:.3f} over {len(rows)} tiles"
    print(message + (f" ({note})" if note else ""))
    return metrics


def _add_to_finetune_run(
    weights_sha256: str,
    metrics: dict[str, float],
    files: list[Path],
    split: str,
    note: str | None,
) -> None:
    """The cell's fine-tuning run gets the test figures too: one run holds the whole cell. They
    are single values, so tags ``summary.<key>`` and ``evaluation/summary.json`` there: that
    run's metrics tab keeps its curves.

    That run is the newest that wrote the evaluated weights (its ``sop.weights_sha256`` tag).
    """
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()],
        filter_string=f"tags.`{tracking.WEIGHTS_TAG}` = '{weights_sha256}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        print("no MLflow run of the fine-tuning wrote these weights; test figures logged here only")
        return
    run_id = runs[0].info.run_id
    tags = [RunTag(k, v) for k, v in tracking.summary_tags(metrics).items()]
    tags += [RunTag("sop.evaluated_on", split)] + (
        [RunTag("sop.evaluation_note", note)] if note else []
    )
    client.log_batch(run_id, tags=tags)
    client.log_dict(run_id, {**metrics, "split": split}, f"evaluation/{tracking.SUMMARY_FILE}")
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
