"""The pretrain stage's flow: the overlap task on one dataset's tile store, for one backbone and
one pretext variant (subimage size, colour jitter), named ``<backbone>-<subimage>-<jitter>``
(``vits14-112-0.0``) like its DVC stage ``pretrain@vits14-112-0.0``.

Outputs (DVC tracks them):
- ``models/pretrain/<name>/encoder.safetensors``: the kept encoder (the ViT, or the ResNet's
  source encoder A); no decoder, no subimage encoder;
- ``models/pretrain/<name>/provenance.json``: params, tile-index hash, final pretext
  validation metrics, the encoder's sha256 (the same inputs always write the same file: the
  code's commit, the MLflow run, speed and memory are the MLflow run's);
- ``metrics/pretrain/<name>.json``: the final metrics (a DVC metrics file);
- ``plots/pretrain/<name>.csv``: the per-epoch curves (a DVC plot).

Checkpoints live in ``.sop/checkpoints/pretrain-<name>-<fingerprint>``: the fingerprint
covers everything that changes the result (params, seed, tile index), so a killed stage resumes
where it stopped and a changed one starts afresh instead of resuming someone else's run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow

from pipeline import layout
from pipeline.config import Params
from pipeline.data import store
from pipeline.errors import DataError
from pipeline.flows.common import (
    write_json,
)
from pipeline.flows.training import TrainingStage, run_training_stage
from pipeline.models.backbones import BACKBONES
from pipeline.train.jobs import resolve_processes
from pipeline.train.pretrain import PretrainJob
from pipeline.transfer import file_digest
from pipeline.zoo import pretext_variant

KEPT_ENCODER = {"vit": "the ViT backbone", "resnet": "encoder A (source)"}


def pretrain_name(backbone: str, subimage_size: int, color_jitter: float) -> str:
    """``vits14-112-0.0``: the stage's matrix item and the name of its outputs."""
    return f"{backbone}-{pretext_variant(subimage_size, color_jitter)}"


def section_for(params: Params, backbone: str) -> dict[str, Any]:
    """The params the pretrain stage of ``backbone`` reads (what DVC declares for it), for the
    pretext variant ``params`` holds (:meth:`Params.for_pretext`)."""
    pretrain = params.pretrain.model_dump(mode="json")
    for axis in ("backbones", "subimage_sizes", "color_jitters"):  # the matrix's, in the cmd
        pretrain.pop(axis)
    pretrain["backbone"] = backbone
    pretrain["subimage_size"] = params.pretrain.subimage_size
    pretrain["color_jitter"] = params.pretrain.color_jitter
    pretrain["weights_file"] = params.pretrain.weights_file.get(backbone)
    pretrain["backbone_epochs"] = params.pretrain.backbone_epochs.get(backbone)
    return {"seed": params.seed, "pretrain": pretrain, "compute": params.compute.model_dump()}


def fingerprint(params: Params, backbone: str, index_sha256: str) -> str:
    """What decides the result: the stage's params (not where it runs) and the tile index."""
    section = section_for(params, backbone)
    section.pop("compute")
    section["compute.device"] = params.compute.device  # precision follows the device
    text = json.dumps({"section": section, "tiles": index_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@flow(
    name="pretrain",
    flow_run_name="pretrain-{backbone}-{subimage_size}-{color_jitter}",
    log_prints=True,
)
def pretrain_flow(
    backbone: str, subimage_size: int, color_jitter: float, params: Params, root: Path
) -> dict[str, Any]:
    """Pretrain ``backbone`` on the overlap task with one pretext variant; export its encoder."""
    p = params.pretrain
    if backbone not in p.backbones:
        raise DataError(f"pretrain.backbones: {backbone!r} is not one of {p.backbones}")
    if subimage_size not in p.subimage_sizes:
        raise DataError(
            f"pretrain.subimage_sizes: {subimage_size} is not one of {p.subimage_sizes}"
        )
    if float(color_jitter) not in p.color_jitters:
        raise DataError(f"pretrain.color_jitters: {color_jitter} is not one of {p.color_jitters}")
    params = params.for_pretext(subimage_size, color_jitter)
    name = pretrain_name(backbone, subimage_size, color_jitter)
    dataset = params.pretrain.dataset
    if dataset not in params.data.datasets:
        # Checked here, not on loading: params that only download or tile need not name it.
        raise DataError(
            f"pretrain.dataset: {dataset!r} is not in data.datasets {params.data.datasets}"
        )
    tiles = layout.tiles_dir(root, dataset)
    if not (tiles / store.INDEX_FILE).exists():
        raise DataError(f"{tiles}: no tile store; run the tile stage for {dataset} first")
    index_sha256 = store.index_hash(tiles)
    key = fingerprint(params, backbone, index_sha256)
    out = layout.pretrain_dir(root, name)
    stage = TrainingStage(
        "pretrain", name, section_for(params, backbone), index_sha256,
        layout.checkpoint_root(root) / f"pretrain-{name}-{key}", out,
        layout.pretrain_curve_path(root, name),
    )  # fmt: skip

    def job_for(tracking_uri: str, run_id: str) -> PretrainJob:
        return PretrainJob(params, backbone, tiles, out, stage.checkpoints, tracking_uri, run_id)

    def outputs(result: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
        final = result["history"][-1]
        provenance = {
            "backbone": backbone,
            "pretext_variant": pretext_variant(subimage_size, color_jitter),
            "encoder": layout.ENCODER_FILE,
            "encoder_sha256": file_digest(out / layout.ENCODER_FILE, "sha256"),
            "kept": KEPT_ENCODER[BACKBONES[backbone].family],
            "params": section_for(params, backbone),
            "dataset": dataset,
            "tile_index_sha256": index_sha256,
            "final": final,
            **{k: result[k] for k in ("steps", "train_tiles", "val_tiles", "starting_weights")},
        }
        write_json(out / layout.PROVENANCE_FILE, provenance)
        metrics = {
            **{k: round(v, 4) for k, v in final.items() if k != "epoch"},
            "epochs": int(final["epoch"]),
        }
        write_json(layout.pretrain_metrics_path(root, name), metrics)
        return metrics, [out / layout.PROVENANCE_FILE]

    metrics = run_training_stage(stage, params, root, resolve_processes(params), job_for, outputs)
    print(
        f"{name}: val IoU {metrics['val_iou']:.3f}, box IoU {metrics['val_box_iou']:.3f}, "
        f"centred-box baseline {metrics['baseline_iou']:.3f} -> {out / layout.ENCODER_FILE}"
    )
    return metrics
