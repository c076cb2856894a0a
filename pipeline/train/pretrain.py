"""The overlap pretext task for the engine: tiles in, focal loss out; IoU metrics on val."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pipeline.data.store import TileStore
from pipeline.train.losses import sigmoid_focal_loss
from pipeline.train.metrics import box_decoded_iou, centred_box_iou, mask_iou
from pipeline.train.sop import OverlapBatch, sample_overlap

# ImageNet statistics: both published starting points (LVD-142M, ImageNet) were trained on them.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VALIDATION_SEED = 20260101  # the same validation pairs every epoch and every run


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


class OverlapTask:
    def __init__(
        self,
        model: nn.Module,
        source_size: int,
        subimage_size: int,
        gamma: float = 2.0,
        alpha: float | None = None,
        flips: bool = False,
    ) -> None:
        self.model = model
        self.source_size, self.subimage_size = source_size, subimage_size
        self.gamma, self.alpha, self.flips = gamma, alpha, flips

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        encoder = {id(p) for p in self.model.encoder.parameters()}  # type: ignore[union-attr]
        backbone = [p for p in self.model.parameters() if id(p) in encoder]
        head = [p for p in self.model.parameters() if id(p) not in encoder]
        return backbone, head

    def sample(self, batch: Tensor, generator: torch.Generator) -> OverlapBatch:
        if self.flips:
            flip = torch.rand(batch.shape[0], 2, generator=generator, device=batch.device) < 0.5
            batch = torch.where(flip[:, 0, None, None, None], batch.flip(2), batch)
            batch = torch.where(flip[:, 1, None, None, None], batch.flip(1), batch)
        return sample_overlap(batch, self.source_size, self.subimage_size, generator)

    def training_loss(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        pairs = self.sample(batch, generator)
        logits = model(normalise(pairs.source), normalise(pairs.subimage))
        return sigmoid_focal_loss(logits.float(), pairs.target, self.gamma, self.alpha)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: DataLoader[Tensor], device: torch.device
    ) -> dict[str, float]:
        model.eval()
        generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
        sums = torch.zeros(3, device=device)
        count = 0
        for batch in loader:
            pairs = sample_overlap(
                batch.to(device), self.source_size, self.subimage_size, generator
            )
            logits = model(normalise(pairs.source), normalise(pairs.subimage)).float()
            sums += torch.stack(
                [
                    mask_iou(logits, pairs.target).sum(),
                    box_decoded_iou(logits, pairs.boxes, self.subimage_size).sum(),
                    centred_box_iou(pairs.boxes, self.source_size, self.subimage_size).sum(),
                ]
            )
            count += batch.shape[0]
        model.train()
        iou, box, baseline = (sums / max(1, count)).tolist()
        return {"val_iou": iou, "val_box_iou": box, "baseline_iou": baseline}
