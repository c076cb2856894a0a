"""The statistics behind the report's intervals: the same mIoU as training's metric, a seeded
tile bootstrap, Student's t quantiles, and contrasts paired by tile or by seed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.intervals import (
    Estimate,
    TileConfusion,
    contrast,
    miou,
    per_image_miou,
    percentile_interval,
    resampled,
    t_quantile,
    tile_resamples,
)
from pipeline.train.segmentation_metrics import mean_iou


def random_tiles(seed: int, tiles: int = 12, classes: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, size=(tiles, classes, classes))


def test_miou_is_the_training_metric_on_the_summed_matrix() -> None:
    matrices = random_tiles(0)
    matrices[:, 3, :] = 0
    matrices[:, :, 3] = 0  # class 3 absent: skipped, not zero
    for evaluated in [(0, 1, 2, 3), (1, 2)]:
        expected = mean_iou(torch.from_numpy(matrices.sum(0)), evaluated)
        assert float(miou(matrices.sum(0), evaluated)) == pytest.approx(expected)


def test_per_image_miou_averages_each_tiles_own_miou() -> None:
    perfect = np.array([[10, 0], [0, 10]])  # 1.0
    wrong = np.array([[10, 10], [0, 0]])  # class 0: 10 / 20; class 1 predicted, never true: 0
    alone = np.array([[5, 0], [0, 0]])  # class 1 absent from truth and prediction: skipped
    tiles = np.stack([perfect, wrong, alone])
    confusion = TileConfusion(tiles, np.arange(3), ("a", "b"), (0, 1), None)
    assert per_image_miou(confusion) == pytest.approx((1.0 + 0.25 + 1.0) / 3)


def test_the_bootstrap_is_seeded_and_resamples_whole_tiles() -> None:
    draws = tile_resamples(12, 200, seed=3)
    assert draws.shape == (200, 12)
    assert (draws.sum(1) == 12).all()
    assert np.array_equal(draws, tile_resamples(12, 200, seed=3))
    assert not np.array_equal(draws, tile_resamples(12, 200, seed=4))
    matrices = random_tiles(1)
    first = resampled(matrices, draws[:1])[0]
    assert np.array_equal(first, np.tensordot(draws[0], matrices, axes=1))


def test_the_interval_holds_the_point_and_narrows_with_more_tiles() -> None:
    widths = []
    for tiles in (10, 400):
        matrices = random_tiles(2, tiles)
        values = miou(resampled(matrices, tile_resamples(tiles, 500, 0)), (0, 1, 2, 3))
        low, high = percentile_interval(values, 0.95)
        assert low <= float(miou(matrices.sum(0), (0, 1, 2, 3))) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3


@pytest.mark.parametrize(
    ("probability", "dof", "expected"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 30, 2.042),
        (0.95, 9, 1.833),
    ],
)
def test_t_quantiles_match_the_tables(probability: float, dof: int, expected: float) -> None:
    assert t_quantile(probability, dof) == pytest.approx(expected, abs=2e-3)


def test_a_contrast_is_paired_by_tile_below_three_seeds_and_by_seed_from_three() -> None:
    base = random_tiles(5, 30, 2)
    better = base.copy()
    better[:, 0, 0] += 20  # more hits on class 0 on every tile
    draws = tile_resamples(30, 300, 0)
    by_tile = contrast([(1.0, {0: better}), (-1.0, {0: base})], (0, 1), draws, 0.95)
    assert by_tile.basis == "tile bootstrap, 30 tiles, 1 seed"
    assert 0 < by_tile.low <= by_tile.value <= by_tile.high
    seeds = {s: better + s for s in range(3)}
    rivals = {s: base + s for s in range(3)}
    by_seed = contrast([(1.0, seeds), (-1.0, rivals)], (0, 1), draws, 0.95)
    assert by_seed.basis == "paired over 3 seeds"
    assert by_seed.low > 0


def test_a_saved_tile_file_reads_back(tmp_path: Path) -> None:
    saved = TileConfusion(random_tiles(0), np.arange(12) * 2, ("a", "b", "c", "d"), (1, 2), 0)
    saved.write(tmp_path / "cell.npz")
    read = TileConfusion.read(tmp_path / "cell.npz")
    assert np.array_equal(read.matrices, saved.matrices)
    assert np.array_equal(read.tiles, saved.tiles)
    assert (read.classes, read.evaluated, read.ignore_index) == (("a", "b", "c", "d"), (1, 2), 0)
    unignored = TileConfusion(saved.matrices, saved.tiles, saved.classes, (0,), None)
    unignored.write(tmp_path / "other.npz")
    assert TileConfusion.read(tmp_path / "other.npz").ignore_index is None
    assert not math.isnan(per_image_miou(read))


def test_a_bound_next_to_zero_shows_its_side() -> None:
    assert Estimate(-0.037, -0.089, -0.0002, "b").text() == "-0.037 [-0.089, -2.0e-04]"
    assert Estimate(0.5, 0.0, 1.0, "b").text() == "+0.500 [+0.000, +1.000]"
