"""Determinism: one seed gives one result, bit for bit, run after run; another seed gives other
label subsets, other crops and another result (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import layout
from pipeline.data.store import TileStore, add_label_fractions, hist_column
from pipeline.data.subsets import fraction_column
from pipeline.train.finetune import SegmentationTiles, training_augmentation
from pipeline.train.seeds import step_generator
from pipeline.train.sop import sample_overlap
from tests.reliability.conftest import Stage

CPU = torch.device("cpu")


def _index(tiles: int = 200, classes: int = 5) -> pd.DataFrame:
    """A training split's class histograms, every class in many tiles."""
    counts = np.random.default_rng(7).integers(0, 1000, size=(tiles, classes))
    return pd.DataFrame(
        {"split": "train", **{hist_column(c): counts[:, c] for c in range(classes)}}
    )


def _subsets(seed: int) -> dict[float, np.ndarray]:
    index = add_label_fractions(_index(), 5, None, (1.0, 0.5, 0.25), seed)
    return {f: index[fraction_column(f)].to_numpy() for f in (0.5, 0.25)}


def test_label_subsets_follow_the_subset_seed() -> None:
    same, again, other = _subsets(0), _subsets(0), _subsets(1)
    for fraction in (0.5, 0.25):
        assert np.array_equal(same[fraction], again[fraction])
        assert not np.array_equal(same[fraction], other[fraction])


def _crops(store: TileStore, seed: int) -> list[np.ndarray]:
    tiles = SegmentationTiles(
        store, store.rows("train"), training_augmentation(128, True, True), seed=seed
    )
    return [tiles[i][0] for i in range(len(tiles))]


def test_segmentation_crops_follow_the_run_seed(small_store: Path) -> None:
    store = TileStore(small_store)
    same, again, other = _crops(store, 0), _crops(store, 0), _crops(store, 1)
    assert all(np.array_equal(a, b) for a, b in zip(same, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(same, other, strict=True))


def test_subimage_positions_follow_the_run_seed() -> None:
    tiles = torch.zeros(16, 3, 64, 64, dtype=torch.uint8)

    def corners(seed: int) -> torch.Tensor:
        return sample_overlap(tiles, 64, 32, step_generator(seed, step=3, device=CPU)).boxes

    assert torch.equal(corners(0), corners(0))
    assert not torch.equal(corners(0), corners(1))


@pytest.mark.slow
def test_the_same_seed_twice_gives_identical_metrics_and_weights(
    pretrain: Stage, finetune: Stage, tmp_path: Path
) -> None:
    for stage in (pretrain, finetune):
        root = stage.copy(tmp_path / stage.name)
        done = stage.run(root)
        assert done.returncode == 0, done.stderr[-3000:]
        stage.assert_matches_uninterrupted(root)


@pytest.mark.slow
def test_another_seed_gives_other_metrics_and_weights(pretrain: Stage, tmp_path: Path) -> None:
    root = pretrain.copy(tmp_path)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("seed: 0", "seed: 1", 1))
    done = pretrain.run(root)
    assert done.returncode == 0, done.stderr[-3000:]
    figures, files = pretrain.outputs(root)
    encoder = next(name for name in files if Path(name).name == layout.ENCODER_FILE)
    assert files[encoder] != pretrain.files[encoder]
    assert figures["train_loss"] != pretrain.expected["train_loss"]
