"""Fine-tuning for segmentation on the engine: tiles and masks in, cross-entropy out; a
confusion matrix over whole validation tiles (sliding windows) for mIoU and per-class IoU.

Augmentation runs in the DataLoader workers with albumentations, jointly on image and mask:
a random crop to the input size (a view of the store's memmap), then one of the square's
symmetries (flips, quarter turns; ``loaders.Dihedral``, done by cv2), no colour change. Each
sample's augmentation is seeded from (seed, epoch, index), so it does not depend on which
worker or rank draws it, nor on where a run was resumed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pipeline import layout
from pipeline.config import FinetuneParams, Params
from pipeline.data.loaders import Dihedral
from pipeline.data.store import StoreMeta, TileStore
from pipeline.errors import DataError, ParamsError
from pipeline.faults import failpoint
from pipeline.files import write_text
from pipeline.models.inits import Normalisation, load_init, normalisation_for
from pipeline.models.segmenters import create_segmenter
from pipeline.models.weights import read_state_dict, save_encoder
from pipeline.train import distributed
from pipeline.train.engine import fit, load_best
from pipeline.train.jobs import (
    RESULT_FILE,
    JobFile,
    engine_settings,
    epoch_logger,
    peak_memory_mb,
)
from pipeline.train.seeds import sample_seed
from pipeline.train.segmentation_metrics import (
    classes_in_mean,
    confusion_matrices,
    confusion_matrix,
    iou_per_class,
    mean_iou,
)
from pipeline.zoo import base_init, metric_name

IGNORE_NOTHING = -100  # F.cross_entropy's default: no label equals it


def training_augmentation(crop: int, flips: bool, rot90: bool) -> A.Compose:
    """Joint image+mask transforms; geometric only (the paper: no colour change)."""
    return A.Compose(
        [A.RandomCrop(height=crop, width=crop), Dihedral(flips=flips, quarter_turns=rot90)]
    )


Pair = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


class SegmentationTiles(Dataset[Pair]):
    """(uint8 (H, W, 3) image, uint8 (H, W) mask) of some rows of a labelled tile store.

    With ``augment`` the pair is augmented (new arrays); without it the whole tile comes back
    as read-only memmap views (validation, test: whole-tile sliding-window inference), which
    ``loaders.collate`` copies into the batch.
    """

    def __init__(
        self,
        store: TileStore,
        rows: npt.NDArray[np.int64],
        augment: A.Compose | None = None,
        seed: int = 0,
    ) -> None:
        self.store, self.rows, self.augment, self.seed = store, rows, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Pair:
        row = int(self.rows[index])
        image, mask = self.store.image(row), self.store.mask(row)
        if self.augment is None:
            return image, mask
        self.augment.set_random_seed(sample_seed(self.seed, self.epoch, index))
        out = self.augment(image=image, mask=mask)
        return out["image"], out["mask"]


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Window offsets covering ``length``: a stride of window*(1-overlap), last one at the edge."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def sliding_window_logits(
    model: nn.Module, images: Tensor, window: int, overlap: float, num_classes: int
) -> Tensor:
    """(B, C, H, W) logits of whole images, averaged where windows overlap.

    Images smaller than the window on a side are passed whole on that side.
    """
    batch, _, height, width = images.shape
    logits = torch.zeros(batch, num_classes, height, width, device=images.device)
    counts = torch.zeros(1, 1, height, width, device=images.device)
    for top in window_starts(height, window, overlap):
        for left in window_starts(width, window, overlap):
            crop = images[..., top : top + window, left : left + window]
            out = model(crop).float()
            logits[..., top : top + window, left : left + window] += out
            counts[..., top : top + window, left : left + window] += 1
    return logits / counts


class SegmentationTask:
    """Cross-entropy with the dataset's ignore index; mIoU over its evaluated classes."""

    shown: tuple[str, ...] = ("val_miou",)  # on the progress bar

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        ignore_index: int | None,
        evaluated_classes: Sequence[int],
        normalisation: Normalisation,
        window: int,
        window_overlap: float = 0.0,
    ) -> None:
        self.model = model
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        self.evaluated_classes = tuple(evaluated_classes)
        self.normalisation = normalisation
        self.window, self.window_overlap = window, window_overlap

    @classmethod
    def for_store(
        cls, model: nn.Module, meta: StoreMeta, init: str, params: FinetuneParams
    ) -> SegmentationTask:
        """The task for a tile store's classes, ``init``'s normalisation and the params'
        window."""
        return cls(
            model,
            meta.class_names,
            meta.ignore_index,
            classes_in_mean(len(meta.class_names), meta.ignore_index, meta.evaluated_classes),
            normalisation_for(base_init(init), params.normalisation_of(init)),
            params.input_size,
            params.window_overlap,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        encoder = {id(p) for p in self.model.encoder.parameters()}  # type: ignore[union-attr]
        trained = [p for p in self.model.parameters() if p.requires_grad]
        return [p for p in trained if id(p) in encoder], [
            p for p in trained if id(p) not in encoder
        ]

    def inputs(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), on the images' device."""
        return self.normalisation.apply(images.permute(0, 3, 1, 2).float())

    def training_loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator
    ) -> Tensor:
        images, masks = batch
        logits = model(self.inputs(images))
        ignore = IGNORE_NOTHING if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits.float(), masks.long(), ignore_index=ignore)

    @torch.no_grad()
    def validation_sums(
        self, model: nn.Module, loader: DataLoader[Any], device: torch.device
    ) -> dict[str, Tensor]:
        """The confusion matrix of the whole tiles in ``loader`` (additive over batches)."""
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        for predicted, masks in self.predictions(model, loader, device):
            matrix += confusion_matrix(predicted, masks, self.num_classes, self.ignore_index)
        return {"confusion": matrix}

    @torch.no_grad()
    def per_tile_confusion(
        self, model: nn.Module, loader: DataLoader[Any], device: torch.device
    ) -> Tensor:
        """(tiles, C, C): each tile's own confusion matrix, in the loader's order."""
        matrices = [
            confusion_matrices(predicted, masks, self.num_classes, self.ignore_index).cpu()
            for predicted, masks in self.predictions(model, loader, device)
        ]
        empty = torch.zeros(0, self.num_classes, self.num_classes, dtype=torch.int64)
        return torch.cat(matrices) if matrices else empty

    def predictions(
        self, model: nn.Module, loader: DataLoader[Any], device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(predicted classes, masks) per batch of whole tiles, in eval mode."""
        was_training = model.training
        model.eval()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        for _, (images, masks) in loader:
            with autocast:
                logits = sliding_window_logits(
                    model,
                    self.inputs(images.to(device)),
                    self.window,
                    self.window_overlap,
                    self.num_classes,
                )
            yield logits.argmax(1), masks.to(device)
        model.train(was_training)

    def summarise(self, sums: Mapping[str, Tensor], prefix: str = "val") -> dict[str, float]:
        """``<prefix>_miou``, ``<prefix>_pixel_accuracy`` and ``<prefix>_iou_<class>``."""
        matrix = sums["confusion"].cpu()
        ious = iou_per_class(matrix).tolist()
        total = int(matrix.sum())
        metrics = {
            f"{prefix}_miou": mean_iou(matrix, self.evaluated_classes),
            f"{prefix}_pixel_accuracy": float(matrix.diagonal().sum()) / total
            if total
            else math.nan,
        }
        for name, iou in zip(self.class_names, ious, strict=True):
            metrics[f"{prefix}_iou_{metric_name(name)}"] = iou
        return metrics


def convergence_epoch(
    history: Sequence[Mapping[str, float]], threshold: float, metric: str = "val_miou"
) -> int | None:
    """The first epoch whose ``metric`` reaches ``threshold`` (the paper's convergence)."""
    for row in history:
        if row.get(metric, -math.inf) >= threshold:
            return int(row["epoch"])
    return None


@dataclass(frozen=True)
class FinetuneJob(JobFile):
    params: Params  # the resolved params, as the flow saw them
    backbone: str
    init: str
    fraction: float
    seed: int  # the cell's: decoder weights, data order and augmentation
    init_weights: Path  # the weights stage's encoder state dict, in the backbone's layout
    store_dir: Path
    out_dir: Path  # best.safetensors and result.json
    checkpoint_dir: Path
    tracking_uri: str | None = None
    run_id: str | None = None

    def run(self) -> dict[str, Any]:
        return run_finetune(self)


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Fine-tune a segmenter from the job's init on its label fraction; keep the best epoch."""
    params = job.params
    f = params.finetune.for_backbone(job.backbone)
    context = distributed.from_environment()
    store = TileStore(job.store_dir)
    meta = store.meta
    if not meta.has_masks:
        raise DataError(f"{job.store_dir}: unlabelled imagery cannot be fine-tuned on")
    if meta.tile_size < f.input_size:
        raise ParamsError(
            f"finetune.input_size: {f.input_size} is larger than the {meta.tile_size}-pixel "
            f"tiles of {job.store_dir}"
        )
    train_rows, val_rows = store.rows("train", job.fraction), store.rows("val")
    if len(train_rows) < f.batch_size:
        raise DataError(
            f"finetune.batch_size: {f.batch_size} is more than the {len(train_rows)} training "
            f"tiles of the {job.fraction:g} label subset in {job.store_dir}"
        )
    if len(val_rows) == 0:
        raise DataError(f"{job.store_dir}: no val tiles to select the best epoch on")
    # The same decoder weights for every init, on every rank and in every resumed run.
    torch.manual_seed(job.seed)
    model = create_segmenter(job.backbone, len(meta.class_names), f.input_size)
    report = load_init(model.encoder, job.backbone, read_state_dict(job.init_weights), job.init)
    task = SegmentationTask.for_store(model, meta, job.init, f)
    settings = engine_settings(params, job.checkpoint_dir, f, best_metric="val_miou", seed=job.seed)
    augment = training_augmentation(f.input_size, f.flips, f.rot90)
    result = fit(
        task,
        SegmentationTiles(store, train_rows, augment, seed=job.seed),
        SegmentationTiles(store, val_rows),
        settings,
        on_epoch=epoch_logger(job.tracking_uri, job.run_id) if context.is_main else None,
        context=context,
    )
    if result.best_epoch is None:
        raise DataError(
            f"{job.store_dir}: validation mIoU was never defined (the val split holds none of "
            "the evaluated classes); no best epoch to keep"
        )
    summary: dict[str, Any] = {
        "init": job.init,
        "fraction": job.fraction,
        "steps": result.steps,
        "history": result.history,
        "resumed_from": result.resumed_from,
        "best_epoch": result.best_epoch,
        "convergence_epoch": convergence_epoch(result.history, f.convergence_threshold),
        "seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 2),
        "peak_memory_mb": round(peak_memory_mb(settings.device), 1),
        "processes": context.world_size,
        "device": settings.device,
        "train_tiles": len(train_rows),
        "val_tiles": len(val_rows),
        "loaded_tensors": report.loaded,
    }
    failpoint("outputs.write")
    if context.is_main:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        best = load_best(job.checkpoint_dir)
        model.load_state_dict(best["model"])
        save_encoder(model, job.out_dir / layout.BEST_WEIGHTS_FILE, {"epoch": str(best["epoch"])})
        write_text(job.out_dir / RESULT_FILE, json.dumps(summary, indent=2))
    distributed.barrier(context)
    return summary


@dataclass(frozen=True)
class Evaluation:
    matrix: Tensor  # int64 (classes, classes): rows the true class, columns the predicted
    per_tile: Tensor  # int64 (tiles, classes, classes), the tiles in ``rows`` order
    figures: dict[str, float]  # test_miou, test_pixel_accuracy, test_iou_<class>
    evaluated_classes: tuple[int, ...]  # the classes in the mean


def evaluate_weights(
    store: TileStore,
    rows: npt.NDArray[np.int64],
    backbone: str,
    init: str,
    weights: Path,
    params: FinetuneParams,
    device: torch.device,
) -> Evaluation:
    """A fine-tuned segmenter's weights on whole tiles of ``store``, through sliding windows of
    ``finetune.input_size``."""
    from pipeline.train.engine import validation_loader

    model = create_segmenter(backbone, len(store.meta.class_names), params.input_size)
    model.load_state_dict(read_state_dict(weights))
    model.to(device)
    task = SegmentationTask.for_store(model, store.meta, base_init(init), params)
    tiles = SegmentationTiles(store, rows)
    loader = validation_loader(tiles, params.batch_size, distributed.SINGLE_PROCESS)
    per_tile = task.per_tile_confusion(model, loader, device)
    matrix = per_tile.sum(0)
    figures = task.summarise({"confusion": matrix}, prefix="test")
    return Evaluation(matrix, per_tile, figures, task.evaluated_classes)
