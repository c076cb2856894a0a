"""Pretext metrics, per image, so that batches and processes can be summed exactly.

- ``mask_iou``: IoU of (sigmoid > threshold) with the target rectangle.
- ``box_decoded_iou``: the known-size box placed where the mean probability is highest.
- ``centred_box_iou``: what predicting the centred box alone scores on the same pairs: the
  position prior. A model has learned the task only where it beats this baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mask_iou(logits: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """(B,) IoU of the thresholded prediction with the target; 1.0 where both are empty."""
    predicted = logits.sigmoid() > threshold
    truth = target > 0.5
    inter = (predicted & truth).flatten(1).sum(1).float()
    union = (predicted | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def box_iou(top_left_a: Tensor, top_left_b: Tensor, size: int) -> Tensor:
    """(B,) IoU of two same-size square boxes given by their (top, left) corners."""
    overlap = (size - (top_left_a - top_left_b).abs()).clamp(min=0)
    inter = (overlap[:, 0] * overlap[:, 1]).float()
    return inter / (2 * size * size - inter)


def decode_box(logits: Tensor, subimage_size: int) -> Tensor:
    """(B, 2) top-left of the ``subimage_size`` box with the highest mean probability."""
    scores = F.avg_pool2d(logits.sigmoid(), kernel_size=subimage_size, stride=1)
    width = scores.shape[-1]
    best = scores.flatten(1).argmax(1)
    return torch.stack([best // width, best % width], dim=1)


def box_decoded_iou(logits: Tensor, boxes: Tensor, subimage_size: int) -> Tensor:
    return box_iou(decode_box(logits, subimage_size), boxes, subimage_size)


def centred_box_iou(boxes: Tensor, source_size: int, subimage_size: int) -> Tensor:
    centre = (source_size - subimage_size) // 2
    return box_iou(torch.full_like(boxes, centre), boxes, subimage_size)
