"""The pretrain stage's flow: the overlap task on one dataset's tile store, for one backbone and
one pretext variant (subimage size, colour jitter), named ``<backbone>-<subimage>-<jitter>``
(``vits14-112-0.0``) like its DVC stage ``pretrain@vits14-112-0.0``. The sweeps' stages run it
for the main variant on a share of the images (``pretrain_images@vits14-0.25``, run
``vits14-img0.25``) or on another dataset (``pretrain_transfer@vits14-loveda``, run
``vits14-loveda``): the run is named like the init that starts from it (``sop-img0.25``).

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
from pipeline.zoo import parse_sop, pretext_variant, sop_run, sweep_init

KEPT_ENCODER = {"vit": "the ViT backbone", "resnet": "encoder A (source)"}


def pretrain_name(
    backbone: str, subimage_size: int, color_jitter: float, sweep: str | None = None
) -> str:
    """``vits14-112-0.0``: the stage's matrix item and the name of its outputs; a sweep's run
    (``sweep``: its init, ``sop-img0.25``) is named after what it varies (``vits14-img0.25``)."""
    return sop_run(backbone, sweep or "sop", pretext_variant(subimage_size, color_jitter))


def section_for(
    params: Params,
    backbone: str,
    image_fraction: float | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """The params the pretrain stage of ``backbone`` reads (what DVC declares for it), for the
    pretext variant ``params`` holds (:meth:`Params.for_pretext`); a sweep's run reads its
    dataset (in the cmd) or its share of the images and the seed of their nested subsets."""
    pretrain = params.pretrain.model_dump(mode="json")
    # The matrices' axes (in the cmds), and the sweeps' lists, which only add stages.
    for axis in ("backbones", "subimage_sizes", "color_jitters", "image_fractions", "datasets"):
        pretrain.pop(axis)
    pretrain["backbone"] = backbone
    pretrain["subimage_size"] = params.pretrain.subimage_size
    pretrain["color_jitter"] = params.pretrain.color_jitter
    pretrain["weights_file"] = params.pretrain.weights_file.get(backbone)
    pretrain["backbone_epochs"] = params.pretrain.backbone_epochs.get(backbone)
    section = {"seed": params.seed, "pretrain": pretrain, "compute": params.compute.model_dump()}
    if dataset is not None:
        pretrain["dataset"] = dataset
    if image_fraction is not None:
        pretrain["image_fraction"] = image_fraction
        section["data"] = {"subset_seed": params.data.subset_seed}
    return section


def fingerprint(section: dict[str, Any], index_sha256: str) -> str:
    """What decides the result: the stage's params (``section``, not where it runs) and the
    tile index."""
    section = {**section, "compute.device": section["compute"]["device"]}
    section.pop("compute")  # precision follows the device
    text = json.dumps({"section": section, "tiles": index_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_params(
    params: Params,
    backbone: str,
    subimage_size: int,
    color_jitter: float,
    sweep: str | None,
) -> tuple[Params, str, str]:
    """The params one run reads (its variant the main one), its name and its dataset; the
    run checked against the params, each mismatch named by its parameter."""
    p = params.pretrain
    if backbone not in p.backbones:
        raise DataError(f"pretrain.backbones: {backbone!r} is not one of {p.backbones}")
    if subimage_size not in p.subimage_sizes:
        raise DataError(
            f"pretrain.subimage_sizes: {subimage_size} is not one of {p.subimage_sizes}"
        )
    if float(color_jitter) not in p.color_jitters:
        raise DataError(f"pretrain.color_jitters: {color_jitter} is not one of {p.color_jitters}")
    parsed = parse_sop(sweep or "sop")
    if parsed.image_fraction is not None and parsed.image_fraction not in p.image_fractions:
        raise DataError(
            f"pretrain.image_fractions: {parsed.image_fraction} is not one of {p.image_fractions}"
        )
    if parsed.dataset is not None and parsed.dataset not in p.datasets:
        raise DataError(f"pretrain.datasets: {parsed.dataset!r} is not one of {p.datasets}")
    variant = pretext_variant(subimage_size, color_jitter)
    if sweep is not None and variant != p.main_variant:
        raise DataError(
            f"{sweep}: the sweeps pretrain the main pretext variant {p.main_variant} "
            f"(pretrain.subimage_sizes[0], color_jitters[0]), not {variant}"
        )
    dataset = parsed.dataset or p.dataset
    if dataset not in params.data.datasets:
        # Checked here, not on loading: params that only download or tile need not name it.
        raise DataError(
            f"pretrain.dataset: {dataset!r} is not in data.datasets {params.data.datasets}"
        )
    name = pretrain_name(backbone, subimage_size, color_jitter, sweep)
    return params.for_pretext(subimage_size, color_jitter), name, dataset


def _flow_run_name() -> str:
    """``pretrain-<run>``, a sweep's run by its own name (``pretrain-vits14-img0.25``)."""
    from prefect.runtime import flow_run

    given = flow_run.parameters
    fraction, dataset = given.get("image_fraction"), given.get("dataset")
    swept = fraction is not None or dataset is not None
    sweep = sweep_init(image_fraction=fraction, dataset=dataset) if swept else None
    variant = (given["backbone"], given["subimage_size"], given["color_jitter"])
    return f"pretrain-{pretrain_name(*variant, sweep)}"


@flow(name="pretrain", flow_run_name=_flow_run_name, log_prints=True)
def pretrain_flow(
    backbone: str,
    subimage_size: int,
    color_jitter: float,
    params: Params,
    root: Path,
    image_fraction: float | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Pretrain ``backbone`` on the overlap task with one pretext variant; export its encoder.
    ``image_fraction`` or ``dataset``: a sweep's run of the main variant (pretrain.image_fractions,
    pretrain.datasets)."""
    swept = image_fraction is not None or dataset is not None
    sweep = sweep_init(image_fraction=image_fraction, dataset=dataset) if swept else None
    params, name, dataset = _run_params(params, backbone, subimage_size, color_jitter, sweep)
    tiles = layout.tiles_dir(root, dataset)
    if not (tiles / store.INDEX_FILE).exists():
        raise DataError(f"{tiles}: no tile store; run the tile stage for {dataset} first")
    index_sha256 = store.index_hash(tiles)
    section = section_for(params, backbone, image_fraction, dataset)
    key = fingerprint(section, index_sha256)
    out = layout.pretrain_dir(root, name)
    variant = name.removeprefix(f"{backbone}-")  # 112-0.0, img0.25, loveda
    identity = {"dataset": dataset, "backbone": backbone, "variant": variant}
    stage = TrainingStage(
        "pretrain", identity, section, index_sha256,
        layout.checkpoint_root(root) / f"pretrain-{name}-{key}", out,
        layout.pretrain_curve_path(root, name),
    )  # fmt: skip

    def job_for(tracking_uri: str, run_id: str) -> PretrainJob:
        return PretrainJob(
            params, backbone, tiles, out, stage.checkpoints, tracking_uri, run_id,
            image_fraction or 1.0,
        )  # fmt: skip

    def outputs(result: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
        final = result["history"][-1]
        provenance = {
            "backbone": backbone,
            "pretext_variant": pretext_variant(subimage_size, color_jitter),
            "encoder": layout.ENCODER_FILE,
            "encoder_sha256": file_digest(out / layout.ENCODER_FILE, "sha256"),
            "kept": KEPT_ENCODER[BACKBONES[backbone].family],
            "params": section,
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
