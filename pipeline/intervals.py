"""How sure a figure is: bootstrap intervals over test tiles and paired intervals over seeds.

Every test mIoU comes from a dataset-level confusion matrix (the sum of the tiles' matrices).
Its interval resamples whole tiles with replacement and re-sums their matrices, so a tile's
pixels stay together (they are not independent). Two cells evaluated on the same tiles are
compared on the same resamples: the difference's interval is paired by tile. Where each side
has at least :data:`MIN_SEEDS` seeds, a comparison is paired over seeds instead (Student's t).

Each cell's per-tile matrices are saved by the evaluate stage (:class:`TileConfusion`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.errors import DataError
from pipeline.files import atomic_write

# Below 3 seeds a seed spread says little; a comparison falls back on the test tiles.
MIN_SEEDS = 3
Matrices = npt.NDArray[np.int64]  # (..., C, C): rows the true class, columns the predicted
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TileConfusion:
    """One cell's confusion matrix per evaluated tile, and what its mIoU averages."""

    matrices: Matrices  # (tiles, C, C)
    tiles: npt.NDArray[np.int64]  # the tiles' rows in the store's index
    classes: tuple[str, ...]
    evaluated: tuple[int, ...]  # the classes in the mean
    ignore_index: int | None

    def write(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            matrices=self.matrices,
            tiles=self.tiles,
            classes=np.array(self.classes),
            evaluated=np.array(self.evaluated, dtype=np.int64),
            ignore_index=np.array(-1 if self.ignore_index is None else self.ignore_index),
        )
        with atomic_write(path) as handle:
            handle.write(buffer.getvalue())

    @classmethod
    def read(cls, path: Path) -> TileConfusion:
        if not path.is_file():
            raise DataError(f"{path}: missing per-tile confusion; rerun the evaluate stage")
        with np.load(path) as saved:
            ignore = int(saved["ignore_index"])
            return cls(
                saved["matrices"].astype(np.int64),
                saved["tiles"].astype(np.int64),
                tuple(str(name) for name in saved["classes"]),
                tuple(int(c) for c in saved["evaluated"]),
                None if ignore < 0 else ignore,
            )


def iou(matrices: Matrices | Floats) -> Floats:
    """(..., C) IoU per class of (..., C, C) matrices; NaN where a class is absent."""
    counts = np.asarray(matrices, dtype=np.float64)
    hits = np.diagonal(counts, axis1=-2, axis2=-1)
    union = counts.sum(-1) + counts.sum(-2) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def miou(matrices: Matrices | Floats, evaluated: Sequence[int]) -> Floats:
    """(...,) mean IoU over the evaluated classes present (the dataset-level, "macro" mIoU)."""
    per_class = iou(matrices)[..., list(evaluated)]
    present = ~np.isnan(per_class)
    total = np.where(present, per_class, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present.any(-1), total / present.sum(-1), np.nan)


def per_image_miou(confusion: TileConfusion) -> float:
    """The mean over tiles of each tile's own mIoU (tiles without evaluated pixels skipped)."""
    values = miou(confusion.matrices, confusion.evaluated)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else math.nan


def tile_resamples(tiles: int, resamples: int, seed: int) -> npt.NDArray[np.int64]:
    """(resamples, tiles): how often each tile is drawn in each bootstrap resample."""
    if tiles == 0:
        raise ValueError("no tiles to resample")
    rng = np.random.default_rng(seed)
    return rng.multinomial(tiles, np.full(tiles, 1.0 / tiles), size=resamples).astype(np.int64)


def resampled(matrices: Matrices, draws: npt.NDArray[np.int64]) -> Floats:
    """(resamples, C, C): each resample's dataset-level matrix."""
    summed: Floats = np.einsum("rt,tij->rij", draws.astype(np.float64), matrices.astype(np.float64))
    return summed


def percentile_interval(values: Floats, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    finite = values[~np.isnan(values)]
    if not len(finite):
        return math.nan, math.nan
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile for ``probability`` in (0.5, 1), by bisection on its CDF."""
    scale = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def tail_mass(x: float) -> float:  # P(0 < T < x), by Simpson's rule
        grid = np.linspace(0.0, x, 4001)
        density = np.exp(scale - (dof + 1) / 2 * np.log1p(grid**2 / dof))
        step = grid[1] - grid[0]
        return float(
            step
            / 3
            * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
        )

    low, high = 0.0, 1.0
    while tail_mass(high) < probability - 0.5:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if tail_mass(middle) < probability - 0.5 else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval and what backs it."""

    value: float
    low: float
    high: float
    basis: str  # "paired over 3 seeds", "tile bootstrap, 13 tiles, 1 seed"

    def text(self, digits: int = 3) -> str:
        value, low, high = (_signed(x, digits) for x in (self.value, self.low, self.high))
        return f"{value} [{low}, {high}]"


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign; a bound that would round to 0 keeps a significant digit, so
    the side of 0 that decides a verdict shows."""
    text = f"{value:+.{digits}f}"
    if value != 0 and float(text) == 0:
        return f"{value:+.1e}"
    return text


def seed_interval(values: Sequence[float], confidence: float, basis: str) -> Estimate:
    """Mean and t interval of per-seed values (at least two)."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    half = t_quantile(0.5 + confidence / 2, len(data) - 1) * float(data.std(ddof=1))
    half /= math.sqrt(len(data))
    return Estimate(mean, mean - half, mean + half, basis)


# A contrast: weights on (label, seed -> the cell's per-tile matrices); e.g. SOP minus rival.
Term = tuple[float, Mapping[int, Matrices]]


def contrast(
    terms: Sequence[Term],
    evaluated: Sequence[int],
    draws: npt.NDArray[np.int64],
    confidence: float,
) -> Estimate:
    """Σ weight x (seed-mean test mIoU): paired over seeds where every term has the same
    :data:`MIN_SEEDS` or more seeds, else a tile bootstrap on shared resamples."""
    seed_sets = [set(seeds) for _, seeds in terms]
    common = sorted(set.intersection(*seed_sets))
    if len(common) >= MIN_SEEDS and all(s == set(common) for s in seed_sets):
        per_seed = [
            sum(w * float(miou(seeds[s].sum(0), evaluated)) for w, seeds in terms) for s in common
        ]
        return seed_interval(per_seed, confidence, f"paired over {len(common)} seeds")
    point = sum(w * _seed_mean(seeds, evaluated, None) for w, seeds in terms)
    spread = sum(w * _seed_mean(seeds, evaluated, draws) for w, seeds in terms)
    low, high = percentile_interval(np.asarray(spread, dtype=np.float64), confidence)
    tiles = draws.shape[1]
    counts = sorted({len(seeds) for _, seeds in terms})
    seeds_text = "/".join(str(c) for c in counts)
    label = f"tile bootstrap, {tiles} tiles, {seeds_text} seed{'s' if counts[-1] > 1 else ''}"
    return Estimate(float(point), low, high, label)


def _seed_mean(
    seeds: Mapping[int, Matrices], evaluated: Sequence[int], draws: npt.NDArray[np.int64] | None
) -> Floats:
    """The mean over seeds of mIoU: on all tiles (draws None) or per resample."""
    values = [
        miou(matrices.sum(0) if draws is None else resampled(matrices, draws), evaluated)
        for matrices in seeds.values()
    ]
    mean: Floats = np.mean(np.stack(values), axis=0)
    return mean


def cell_interval(
    seeds: Mapping[int, Matrices],
    evaluated: Sequence[int],
    draws: npt.NDArray[np.int64],
    confidence: float,
) -> tuple[float, float]:
    """The tile-bootstrap interval of a cell's (seed-mean) test mIoU."""
    return percentile_interval(_seed_mean(seeds, evaluated, draws), confidence)


def class_intervals(
    matrices: Matrices, draws: npt.NDArray[np.int64], confidence: float
) -> list[tuple[float, float]]:
    """Each class's tile-bootstrap IoU interval for one cell."""
    per_class = iou(resampled(matrices, draws))
    return [percentile_interval(per_class[:, c], confidence) for c in range(per_class.shape[1])]
