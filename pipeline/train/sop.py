"""Subimage Overlap Prediction: turn a batch of tiles into (source, subimage, target mask).

Everything is batched tensor indexing on the tiles' device, with no Python loop per sample, so on
a GPU the sampling costs a few kernels per step. The source is the tile resized to
``source_size``; the subimage is an axis-aligned ``subimage_size`` crop of the resized source at
a uniformly random position, not resized, rotated or colour-changed (README, "Where the paper
is silent"); the target is 1 exactly on the crop's rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class OverlapBatch:
    source: Tensor  # (B, 3, S, S) float in [0, 1]
    subimage: Tensor  # (B, 3, s, s) float in [0, 1]
    target: Tensor  # (B, 1, S, S) float, 1 inside the crop
    boxes: Tensor  # (B, 2) long: (top, left) of the crop in source pixels


def to_float_images(tiles: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 from the tile store, or (B, 3, H, W) float -> (B, 3, H, W) in [0, 1]."""
    if tiles.dtype == torch.uint8:
        tiles = tiles.permute(0, 3, 1, 2) if tiles.shape[-1] == 3 else tiles
        return tiles.float().div_(255.0)
    return tiles.float()


def positions_for(indices: Tensor, salt: int, positions: int) -> Tensor:
    """(B, 2) crop corners in [0, positions), a fixed function of each sample's index.

    Validation pairs are tied to the sample, not to the batch or rank that sees it, so the
    metrics are the same in any batching and under DDP. A splitmix64-style integer hash,
    vectorised (int64 arithmetic wraps).
    """
    x = indices.long()[:, None] * 2 + torch.arange(2, device=indices.device)
    x = x * -7046029254386353131 + salt  # 0x9E3779B97F4A7C15 as a signed int64
    x = (x ^ (x >> 30)) * -4658895280553007687
    x = (x ^ (x >> 27)) * -7723592293110705685
    x = x ^ (x >> 31)
    return x.remainder(positions)


def sample_overlap(
    tiles: Tensor,
    source_size: int,
    subimage_size: int,
    generator: torch.Generator | None = None,
    top_left: Tensor | None = None,
) -> OverlapBatch:
    """One subimage per source, at a uniformly random position (``generator`` on tiles' device)
    or at the given (B, 2) ``top_left`` corners."""
    if not 0 < subimage_size <= source_size:
        raise ValueError(f"subimage {subimage_size} must lie in (0, source {source_size}]")
    images = to_float_images(tiles)
    batch, device = images.shape[0], images.device
    if images.shape[-2:] != (source_size, source_size):
        images = F.interpolate(
            images,
            size=(source_size, source_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).clamp_(0.0, 1.0)
    positions = source_size - subimage_size + 1
    if top_left is None:
        top_left = torch.randint(0, positions, (batch, 2), generator=generator, device=device)
    elif int(top_left.min()) < 0 or int(top_left.max()) >= positions:
        raise ValueError(f"crop corners must lie in [0, {positions})")
    offsets = torch.arange(subimage_size, device=device)
    rows = (top_left[:, 0:1] + offsets)[:, :, None]  # (B, s, 1)
    cols = (top_left[:, 1:2] + offsets)[:, None, :]  # (B, 1, s)
    index = torch.arange(batch, device=device)[:, None, None]
    subimage = images.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)
    grid = torch.arange(source_size, device=device)
    inside_rows = (grid >= top_left[:, 0:1]) & (grid < top_left[:, 0:1] + subimage_size)
    inside_cols = (grid >= top_left[:, 1:2]) & (grid < top_left[:, 1:2] + subimage_size)
    target = (inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1).float()
    return OverlapBatch(images, subimage.contiguous(), target, top_left)
