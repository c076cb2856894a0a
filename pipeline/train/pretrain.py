"""The overlap pretext task for the engine: tiles in, focal loss out; IoU metrics on val."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pipeline.data.store import TileStore
from pipeline.train.losses import sigmoid_focal_loss
from pipeline.train.metrics import box_decoded_iou, centred_box_iou, mask_iou
from pipeline.train.sop import OverlapBatch, positions_for, sample_overlap

# ImageNet statistics: both published starting points (LVD-142M, ImageNet) were trained on them.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VALIDATION_SEED = 20260101  # the same validation pairs every epoch and every run
LUMA = (0.299, 0.587, 0.114)


class StoreTiles(Dataset[Tensor]):
    """uint8 (H, W, 3) tiles of some rows of a tile store; decoding-free memmap reads."""

    def __init__(self, store: TileStore, rows: np.ndarray) -> None:
        self.store, self.rows = store, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tensor:
        # A copy: the memmap is read-only, and the batch is collated into new memory anyway.
        return torch.from_numpy(np.array(self.store.image(int(self.rows[index]))))


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
