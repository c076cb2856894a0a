"""The overlap pretext task for the engine: tiles in, focal loss out; IoU metrics on val."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pipeline import layout
from pipeline.config import Params
from pipeline.data.loaders import resize_tile
from pipeline.data.store import TileStore
from pipeline.errors import DataError
from pipeline.faults import failpoint
from pipeline.files import write_text
from pipeline.models.inits import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.overlap import create_overlap_model
from pipeline.models.weights import load_starting_weights, save_encoder
from pipeline.train import distributed
from pipeline.train.engine import fit
from pipeline.train.jobs import (
    RESULT_FILE,
    JobFile,
    engine_settings,
    epoch_logger,
    peak_memory_mb,
)
from pipeline.train.losses import sigmoid_focal_loss
from pipeline.train.metrics import box_decoded_iou, centred_box_iou, mask_iou
from pipeline.train.sop import OverlapBatch, positions_for, sample_overlap

# ImageNet statistics: both published starting points (LVD-142M, ImageNet) were trained on them.
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
HELD_OUT_EVERY = 20  # unsplit imagery: one tile in 20 validates the pretext task
VALIDATION_SEED = 20260101  # the same validation pairs every epoch and every run
LUMA = (0.299, 0.587, 0.114)


class StoreTiles(Dataset[npt.NDArray[np.uint8]]):
    """uint8 (H, W, 3) tiles of some rows of a tile store; decoding-free memmap reads.

    With ``size`` the worker resizes each tile to (size, size) (the pretext's source size), so
    the batch crosses to the main process and the device at that size. Without it the item is
    a read-only view of the memmap: ``loaders.collate`` makes the one copy, into the batch.
    """

    def __init__(self, store: TileStore, rows: np.ndarray, size: int | None = None) -> None:
        self.store, self.rows, self.size = store, rows, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> npt.NDArray[np.uint8]:
        tile = self.store.image(int(self.rows[index]))
        return tile if self.size is None else resize_tile(tile, self.size)


def normalise(images: Tensor) -> Tensor:
    return (images - MEAN.to(images.device)) / STD.to(images.device)


def color_jitter(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Per-image brightness, contrast and saturation factors drawn from [1 - s, 1 + s].

    Batched: three (B, 1, 1, 1) factors, no loop per sample. Only for the ablation (off by
    default): the paper finds colour augmentation hurts the pretext task.
    """
    factors = 1.0 + strength * (
        2 * torch.rand(3, images.shape[0], 1, 1, 1, generator=generator, device=images.device) - 1
    )
    luma = torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)
    images = images * factors[0]
    mean_grey = (images * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    images = (images - mean_grey) * factors[1] + mean_grey
    grey = (images * luma).sum(1, keepdim=True)
    return ((images - grey) * factors[2] + grey).clamp(0.0, 1.0)


class OverlapTask:
    shown: tuple[str, ...] = ("val_iou",)  # on the progress bar

    def __init__(
        self,
        model: nn.Module,
        source_size: int,
        subimage_size: int,
        gamma: float = 2.0,
        alpha: float | None = None,
        flips: bool = False,
        jitter: float = 0.0,
    ) -> None:
        self.model = model
        self.source_size, self.subimage_size = source_size, subimage_size
        self.gamma, self.alpha, self.flips, self.jitter = gamma, alpha, flips, jitter

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        encoder = {id(p) for p in self.model.encoder.parameters()}  # type: ignore[union-attr]
        trained = [p for p in self.model.parameters() if p.requires_grad]
        backbone = [p for p in trained if id(p) in encoder]
        head = [p for p in trained if id(p) not in encoder]
        return backbone, head

    def sample(self, batch: Tensor, generator: torch.Generator) -> OverlapBatch:
        if self.flips:
            flip = torch.rand(batch.shape[0], 2, generator=generator, device=batch.device) < 0.5
            batch = torch.where(flip[:, 0, None, None, None], batch.flip(2), batch)
            batch = torch.where(flip[:, 1, None, None, None], batch.flip(1), batch)
        pairs = sample_overlap(batch, self.source_size, self.subimage_size, generator)
        if self.jitter > 0:
            # Independently for the two views: the pixels under the mask no longer match.
            return OverlapBatch(
                color_jitter(pairs.source, self.jitter, generator),
                color_jitter(pairs.subimage, self.jitter, generator),
                pairs.target,
                pairs.boxes,
            )
        return pairs

    def training_loss(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        pairs = self.sample(batch, generator)
        logits = model(normalise(pairs.source), normalise(pairs.subimage))
        return sigmoid_focal_loss(logits.float(), pairs.target, self.gamma, self.alpha)

    @torch.no_grad()
    def validation_sums(
        self, model: nn.Module, loader: DataLoader[Any], device: torch.device
    ) -> dict[str, Tensor]:
        """Sums of mask IoU, box-decoded IoU and the centred-box baseline, and the count.

        Each validation pair's crop is a fixed function of the tile's index: the same pairs
        every epoch, in every run and under any number of ranks.
        """
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, device=device)
        positions = self.source_size - self.subimage_size + 1
        for indices, tiles in loader:
            corners = positions_for(indices.to(device), VALIDATION_SEED, positions)
            pairs = sample_overlap(
                tiles.to(device), self.source_size, self.subimage_size, top_left=corners
            )
            logits = model(normalise(pairs.source), normalise(pairs.subimage)).float()
            sums += torch.stack(
                [
                    mask_iou(logits, pairs.target).sum(),
                    box_decoded_iou(logits, pairs.boxes, self.subimage_size).sum(),
                    centred_box_iou(pairs.boxes, self.source_size, self.subimage_size).sum(),
                    torch.tensor(float(len(indices)), device=device),
                ]
            )
        model.train(was_training)
        return {"sums": sums}

    def summarise(self, sums: Mapping[str, Tensor]) -> dict[str, float]:
        iou, box, baseline, count = sums["sums"].tolist()
        count = max(count, 1.0)
        return {
            "val_iou": iou / count,
            "val_box_iou": box / count,
            "baseline_iou": baseline / count,
        }


@dataclass(frozen=True)
class PretrainJob(JobFile):
    params: Params  # the resolved params, as the flow saw them
    backbone: str
    store_dir: Path
    out_dir: Path  # encoder.safetensors and result.json
    checkpoint_dir: Path
    tracking_uri: str | None = None
    run_id: str | None = None
    image_fraction: float = 1.0  # the data-scale sweep's share of the training rows

    def run(self) -> dict[str, Any]:
        return run_pretrain(self)


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


def image_subset(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The first ceil(fraction * n) rows of one seeded ordering, sorted: every smaller share
    lies within every larger one (pretrain.image_fractions, nested by data.subset_seed)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"an image fraction lies in (0, 1], got {fraction}")
    order = np.random.default_rng(seed).permutation(np.sort(rows))
    return np.sort(order[: math.ceil(fraction * len(rows))])


def run_pretrain(job: PretrainJob) -> dict[str, Any]:
    """Train the overlap model of ``job.backbone``; the main rank exports the encoder."""
    params = job.params
    p = params.pretrain
    context = distributed.from_environment()
    store = TileStore(job.store_dir)
    train_rows, val_rows = pretrain_rows(store, p.images, params.seed)
    train_rows = image_subset(train_rows, job.image_fraction, params.data.subset_seed)
    if len(train_rows) < p.batch_size:
        share = f" ({job.image_fraction:g} of them)" if job.image_fraction < 1.0 else ""
        raise DataError(
            f"pretrain.batch_size: {p.batch_size} is more than the {len(train_rows)} training "
            f"tiles{share} of {job.store_dir}"
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
    settings = engine_settings(
        params, job.checkpoint_dir, p.model_copy(update={"epochs": p.epochs_of(job.backbone)})
    )
    logger = epoch_logger(job.tracking_uri, job.run_id) if context.is_main else None
    result = fit(
        task,
        StoreTiles(store, train_rows, size=p.source_size),
        StoreTiles(store, val_rows, size=p.source_size),
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
    failpoint("outputs.write")
    if context.is_main:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        save_encoder(model.encoder, job.out_dir / layout.ENCODER_FILE)  # type: ignore[arg-type]
        write_text(job.out_dir / RESULT_FILE, json.dumps(summary, indent=2))
    distributed.barrier(context)
    return summary
