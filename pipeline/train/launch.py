"""Training jobs: what one process (or each torchrun rank) runs.

A stage's flow writes a job file and runs it here, in its own process for one device or
through ``torchrun --nproc_per_node N -m pipeline.train.launch JOB`` for DDP. The main rank
logs per-epoch metrics to the flow's MLflow run and writes the job's outputs; the flow then
reads them back. Keeping the rank code free of Prefect lets a flow stay one process that
orchestrates, whatever the number of training processes.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Params, load_params
from pipeline.data.store import TileStore
from pipeline.errors import DataError, ParamsError
from pipeline.models.overlap import create_overlap_model
from pipeline.models.weights import load_starting_weights, save_encoder
from pipeline.train import distributed
from pipeline.train.engine import EngineSettings, fit
from pipeline.train.pretrain import OverlapTask, StoreTiles

RESULT_FILE = "result.json"
ENCODER_FILE = "encoder.safetensors"
HELD_OUT_EVERY = 20  # unsplit imagery: one tile in 20 validates the pretext task


@dataclass(frozen=True)
class PretrainJob:
    params_file: Path  # the resolved params, as the flow saw them
    backbone: str
    store_dir: Path
    out_dir: Path  # encoder.safetensors and result.json
    checkpoint_dir: Path
    tracking_uri: str | None = None
    run_id: str | None = None

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({k: str(v) if v else v for k, v in asdict(self).items()}))
        return path

    @classmethod
    def read(cls, path: Path) -> PretrainJob:
        raw = json.loads(path.read_text())
        for key in ("params_file", "store_dir", "out_dir", "checkpoint_dir"):
            raw[key] = Path(raw[key])
        return cls(**raw)


def pretrain_rows(store: TileStore, images: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of the store for ``pretrain.images``.

    ``train``: the train split (or the whole of unsplit imagery, split ``pretrain``);
    ``all``: every tile. Validation is the val split; imagery without one holds out every
    20th tile of a seeded permutation of the training rows.
    """
    train = np.concatenate([store.rows("train"), store.rows("pretrain")])
    if images == "all":
        train = np.arange(len(store))
    val = store.rows("val")
    if len(val) == 0:
        order = np.random.default_rng(seed).permutation(train)
        val, train = order[::HELD_OUT_EVERY], np.setdiff1d(train, order[::HELD_OUT_EVERY])
    if len(train) == 0:
        raise DataError(f"{store.directory}: no tiles to pretrain on (pretrain.images={images})")
    return np.sort(train), np.sort(val)


def resolve_device(params: Params) -> str:
    wanted = params.compute.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ParamsError("compute.device: cuda requested but no GPU is visible")
    return wanted


def resolve_processes(params: Params) -> int:
    """DDP processes: ``compute.devices``, or every visible GPU (1 on CPU) for auto."""
    if params.compute.devices != "auto":
        return params.compute.devices
    return max(1, torch.cuda.device_count()) if resolve_device(params) == "cuda" else 1


def engine_settings(params: Params, checkpoint_dir: Path) -> EngineSettings:
    p, compute = params.pretrain, params.compute
    return EngineSettings(
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr_backbone=p.lr_backbone,
        lr_head=p.lr_head,
        weight_decay=p.weight_decay,
        warmup_epochs=p.warmup_epochs,
        seed=params.seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=compute.checkpoint_every,
        compile=compute.compile,
        num_workers=compute.loader_workers,
        progress=compute.progress,
        device=resolve_device(params),
    )


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_pretrain(job: PretrainJob) -> dict[str, Any]:
    """Train the overlap model of ``job.backbone``; the main rank exports the encoder."""
    params = load_params(job.params_file)
    p = params.pretrain
    context = distributed.from_environment()
    store = TileStore(job.store_dir)
    train_rows, val_rows = pretrain_rows(store, p.images, params.seed)
    if len(train_rows) < p.batch_size:
        raise DataError(
            f"pretrain.batch_size: {p.batch_size} is more than the {len(train_rows)} training "
            f"tiles of {job.store_dir}"
        )
    # The same initial weights on every rank and in every resumed run.
    torch.manual_seed(params.seed)
    model = create_overlap_model(
        job.backbone, p.source_size, p.subimage_size, share_encoders=p.share_encoders
    )
    weights_file = p.weights_file.get(job.backbone)
    report = load_starting_weights(
        model.encoder,  # type: ignore[arg-type]
        job.backbone,
        p.init,
        Path(weights_file) if weights_file else None,
    )
    task = OverlapTask(
        model,
        p.source_size,
        p.subimage_size,
        gamma=p.focal_gamma,
        alpha=p.focal_alpha,
        flips=p.flips,
        jitter=p.color_jitter,
    )
    settings = engine_settings(params, job.checkpoint_dir)
    logger = _epoch_logger(job) if context.is_main else None
    result = fit(
        task,
        StoreTiles(store, train_rows),
        StoreTiles(store, val_rows),
        settings,
        on_epoch=logger,
        context=context,
    )
    summary: dict[str, Any] = {
        "backbone": job.backbone,
        "steps": result.steps,
        "history": result.history,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 2),
        "peak_memory_mb": round(peak_memory_mb(settings.device), 1),
        "processes": context.world_size,
        "device": settings.device,
        "train_tiles": len(train_rows),
        "val_tiles": len(val_rows),
        "starting_weights": report.source if report else "none",
    }
    if context.is_main:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        save_encoder(model.encoder, job.out_dir / ENCODER_FILE)  # type: ignore[arg-type]
        (job.out_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2))
    distributed.barrier(context)
    return summary


def _epoch_logger(job: PretrainJob) -> Any:
    if not job.run_id:
        return None
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(job.tracking_uri)

    def log(epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, epoch) for k, v in metrics.items() if k != "epoch"]
        client.log_batch(job.run_id or "", metrics=batch)

    return log


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeline.train.launch JOB.json", file=sys.stderr)
        return 2
    context = distributed.from_environment()
    try:
        run_pretrain(PretrainJob.read(Path(args[0])))
    finally:
        distributed.shutdown(context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
