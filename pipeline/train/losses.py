"""Losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = None
) -> Tensor:
    """Mean sigmoid focal loss (Lin et al.): BCE scaled by (1 - p_t) ** gamma.

    ``alpha`` weights positives by alpha and negatives by 1 - alpha; off by default here because
    the detection default 0.25 down-weights the subimage's pixels, a quarter of the source
    (README, "Where the paper is silent"). ``gamma=0`` and no alpha is plain binary cross-entropy.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = logits.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    loss = bce * (1 - p_t).pow(gamma) if gamma else bce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()
