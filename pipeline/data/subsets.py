"""Label-fraction subsets of a training split: nested, seeded and class-complete.

One ordering of the train tiles is drawn from the seed; the subset for fraction f is the first
ceil(f * n) tiles of it, so 25% lies within 50% within 100% by construction, and every
initialisation fine-tunes on the same tiles. The ordering starts with a small cover of tiles
(picked in the random order, rarest class first) that holds every class present in the full
split, so even the smallest subset keeps every class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FRACTION_PREFIX = "in_frac_"


def fraction_column(fraction: float) -> str:
    """Index column marking membership of the ``fraction`` label subset: ``in_frac_0.25``."""
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"label fraction must lie in (0, 1], got {fraction}")
    return f"{FRACTION_PREFIX}{fraction:g}"


def class_complete_order(histograms: npt.NDArray[np.int64], seed: int) -> npt.NDArray[np.int64]:
    """A permutation of ``range(n)`` whose every prefix of length >= its cover keeps all classes.

    ``histograms`` is (n_tiles, n_classes) pixel counts with ignored pixels already excluded.
    """
    n_tiles = histograms.shape[0]
    order = np.random.default_rng(seed).permutation(n_tiles)
    present = histograms[order] > 0  # (n_tiles, n_classes), in the drawn order
    remaining = set(np.flatnonzero(present.any(axis=0)).tolist())
    cover: list[int] = []
    while remaining:
        # The rarest still-uncovered class first: its first tile in the drawn order may also
        # hold commoner classes, which keeps the cover small.
        rarest = min(remaining, key=lambda c: (int(present[:, c].sum()), c))
        position = int(np.flatnonzero(present[:, rarest])[0])
        cover.append(position)
        remaining -= set(np.flatnonzero(present[position]).tolist())
    chosen = np.zeros(n_tiles, dtype=bool)
    chosen[cover] = True
    return np.concatenate([order[cover], order[~chosen]]).astype(np.int64)


def subset_sizes(n_tiles: int, fractions: Sequence[float], minimum: int) -> dict[float, int]:
    """Tiles per fraction: ceil(f * n), but never fewer than the class cover needs."""
    return {f: min(n_tiles, max(math.ceil(f * n_tiles), minimum)) for f in fractions}


def cover_size(histograms: npt.NDArray[np.int64], order: npt.NDArray[np.int64]) -> int:
    """The shortest prefix of ``order`` that holds every class of the split."""
    if len(order) == 0:
        return 0
    present = histograms[order] > 0
    needed = present.any(axis=0)
    seen = np.logical_or.accumulate(present, axis=0)
    complete = np.flatnonzero((seen == needed).all(axis=1))
    return int(complete[0]) + 1


def membership(
    histograms: npt.NDArray[np.int64], fractions: Sequence[float], seed: int
) -> dict[float, npt.NDArray[np.bool_]]:
    """fraction -> boolean mask over the tiles of one split."""
    n_tiles = histograms.shape[0]
    order = class_complete_order(histograms, seed)
    sizes = subset_sizes(n_tiles, fractions, cover_size(histograms, order))
    masks = {}
    for fraction, size in sizes.items():
        mask = np.zeros(n_tiles, dtype=bool)
        mask[order[:size]] = True
        masks[fraction] = mask
    return masks
