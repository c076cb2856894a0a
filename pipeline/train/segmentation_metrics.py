"""Segmentation metrics from a confusion matrix accumulated on the device.

A confusion matrix is additive: the sum of per-batch (or per-rank) matrices is the matrix of
the whole set, so all-reducing it under DDP gives exactly the single-process mIoU. Pixels
labelled with the dataset's ignore index never enter it; classes outside the evaluated set
(DeepGlobe's ``unknown``) are counted but left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def confusion_matrix(
    predicted: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """(C, C) int64 counts, rows the true class and columns the predicted one.

    ``predicted`` and ``target`` hold class ids of the same shape; target pixels equal to
    ``ignore_index`` or outside [0, C) are skipped. One ``bincount`` on the tensors' device.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"prediction {tuple(predicted.shape)} vs target {tuple(target.shape)}")
    truth = target.reshape(-1).long()
    guess = predicted.reshape(-1).long()
    keep = (truth >= 0) & (truth < num_classes)
    if ignore_index is not None:
        keep &= truth != ignore_index
    flat = truth[keep] * num_classes + guess[keep].clamp(0, num_classes - 1)
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def confusion_matrices(
    predicted: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """(B, C, C) int64 counts, one matrix per image of a (B, H, W) batch, as
    :func:`confusion_matrix` counts them: per-image matrices let a report resample images."""
    if predicted.shape != target.shape or predicted.dim() < 2:
        raise ValueError(f"prediction {tuple(predicted.shape)} vs target {tuple(target.shape)}")
    batch = predicted.shape[0]
    truth = target.reshape(batch, -1).long()
    guess = predicted.reshape(batch, -1).long().clamp(0, num_classes - 1)
    keep = (truth >= 0) & (truth < num_classes)
    if ignore_index is not None:
        keep &= truth != ignore_index
    image = torch.arange(batch, device=truth.device).unsqueeze(1).expand_as(truth)
    flat = (image * num_classes + truth) * num_classes + guess
    counts = torch.bincount(flat[keep], minlength=batch * num_classes * num_classes)
    return counts.reshape(batch, num_classes, num_classes)


def iou_per_class(matrix: Tensor) -> Tensor:
    """(C,) float IoU per class; NaN for a class neither present nor predicted."""
    matrix = matrix.double()
    hits = matrix.diagonal()
    union = matrix.sum(0) + matrix.sum(1) - hits
    return torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, float("nan")))


def mean_iou(matrix: Tensor, evaluated_classes: Sequence[int]) -> float:
    """The mean IoU over ``evaluated_classes``, skipping classes absent from the set (NaN)."""
    if not evaluated_classes:
        raise ValueError("no evaluated classes")
    ious = iou_per_class(matrix)[list(evaluated_classes)]
    present = ious[~ious.isnan()]
    return float(present.mean()) if len(present) else float("nan")


def classes_in_mean(
    num_classes: int, ignore_index: int | None, evaluated_classes: Sequence[int] = ()
) -> tuple[int, ...]:
    """The classes mIoU averages: the dataset's evaluated ones, else every class but ignored."""
    if evaluated_classes:
        return tuple(evaluated_classes)
    return tuple(c for c in range(num_classes) if c != ignore_index)
