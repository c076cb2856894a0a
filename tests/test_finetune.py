"""Fine-tuning pieces: worker-independent joint augmentation, sliding windows over whole tiles,
the loss's ignore index, metric names, and the best/convergence epochs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

from pipeline import layout
from pipeline.data.store import TileStore
from pipeline.models.inits import normalisation_for
from pipeline.train.engine import best_epoch
from pipeline.train.finetune import (
    SegmentationTask,
    SegmentationTiles,
    convergence_epoch,
    sliding_window_logits,
    training_augmentation,
    window_starts,
)
from pipeline.train.seeds import sample_seed, seed_worker
from pipeline.zoo import metric_name


def tiles(store_dir: Path, crop: int = 128) -> SegmentationTiles:
    store = TileStore(store_dir)
    return SegmentationTiles(
        store, store.rows("train"), training_augmentation(crop, True, True), seed=5
    )


def test_augmentation_depends_on_seed_epoch_and_index_only(small_store: Path) -> None:
    dataset = tiles(small_store)
    dataset.set_epoch(3)
    first = [dataset[i] for i in (2, 0, 1)]
    # Another order, another process (a DataLoader worker): the same pairs.
    loader = DataLoader(
        dataset, batch_size=1, num_workers=2, sampler=[1, 2, 0], worker_init_fn=seed_worker
    )
    by_index = dict(zip([1, 2, 0], loader, strict=True))
    for i, (image, mask) in zip((2, 0, 1), first, strict=True):
        assert np.array_equal(by_index[i][0][0].numpy(), image)
        assert np.array_equal(by_index[i][1][0].numpy(), mask)
    dataset.set_epoch(4)
    assert not np.array_equal(dataset[2][0], first[0][0])


class CoordinateStore:
    """Tiles whose pixels spell their own coordinates, masks a function of them."""

    size = 300

    def image(self, row: int) -> np.ndarray:
        r, c = np.mgrid[: self.size, : self.size]
        return np.stack([r % 256, c % 256, (r // 256) * 16 + c // 256 + row], -1).astype(np.uint8)

    def mask(self, row: int) -> np.ndarray:
        r, c = np.mgrid[: self.size, : self.size]
        return ((r * 7 + c * 3) % 5).astype(np.uint8)


def test_image_and_mask_are_transformed_together() -> None:
    augment = training_augmentation(96, flips=True, rot90=True)
    dataset = SegmentationTiles(CoordinateStore(), np.arange(3), augment)  # type: ignore[arg-type]
    layouts = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(3):
            image, mask = (a.astype(np.int64) for a in dataset[index])
            assert image.shape == (96, 96, 3)
            assert mask.shape == (96, 96)
            high = image[..., 2] - index
            r = image[..., 0] + 256 * (high // 16)
            c = image[..., 1] + 256 * (high % 16)
            # Each output pixel carries its source coordinates; its label must be theirs.
            assert np.array_equal(mask, (r * 7 + c * 3) % 5)
            # Rows and columns of the source: which way the crop was flipped or turned.
            layouts.add((int(np.sign(r[1, 0] - r[0, 0])), int(np.sign(c[1, 0] - c[0, 0]))))
    assert len(layouts) > 2  # flips and rotations happen


def test_sample_seeds_differ_between_neighbours() -> None:
    seeds = {sample_seed(0, e, i) for e in range(20) for i in range(500)}
    assert len(seeds) == 20 * 500
    assert all(0 <= s < 2**32 for s in seeds)


@given(
    length=st.integers(1, 700),
    window=st.integers(1, 300),
    overlap=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_windows_cover_every_pixel_and_stay_inside(
    length: int, window: int, overlap: float
) -> None:
    starts = window_starts(length, window, overlap)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert start >= 0
        assert start + min(window, length) <= length
        covered[start : start + window] = True
    assert covered.all()
    assert starts == sorted(set(starts))


class PixelModel(nn.Module):
    """Per-pixel logits (a 1x1 conv): windows must give exactly the whole-image result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_sliding_windows_equal_whole_image_inference_for_a_pixelwise_model(overlap: float) -> None:
    torch.manual_seed(0)
    model = PixelModel()
    images = torch.randn(2, 3, 100, 70)
    with torch.no_grad():
        windowed = sliding_window_logits(model, images, 32, overlap, 4)
        whole = model(images)
    assert torch.allclose(windowed, whole, atol=1e-6)


def _task(model: nn.Module, ignore: int | None) -> SegmentationTask:
    return SegmentationTask(
        model,
        ("no-data", "Building", "water body"),
        ignore,
        (1, 2),
        normalisation_for("random", "imagenet"),
        16,
    )


def test_loss_ignores_the_ignore_index() -> None:
    torch.manual_seed(0)
    model = PixelModel()
    images = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    masks = torch.randint(0, 3, (2, 16, 16), dtype=torch.uint8)
    task = _task(nn.Sequential(model, nn.Conv2d(4, 3, 1)), ignore=0)
    generator = torch.Generator()
    loss = task.training_loss(task.model, (images, masks), generator)
    logits = task.model(task.inputs(images))
    by_hand = nn.functional.cross_entropy(logits, masks.long(), ignore_index=0)
    assert loss.item() == pytest.approx(by_hand.item())
    everything = nn.functional.cross_entropy(logits, masks.long())
    assert loss.item() != pytest.approx(everything.item())


def test_summary_names_each_class_and_averages_the_evaluated_ones() -> None:
    task = _task(PixelModel(), ignore=0)
    matrix = torch.tensor([[0, 0, 0], [0, 3, 1], [0, 1, 1]])
    metrics = task.summarise({"confusion": matrix})
    assert metrics["val_iou_building"] == pytest.approx(3 / 5)
    assert metrics["val_iou_water_body"] == pytest.approx(1 / 3)
    assert math.isnan(metrics["val_iou_no_data"])
    assert metrics["val_miou"] == pytest.approx((3 / 5 + 1 / 3) / 2)
    assert metrics["val_pixel_accuracy"] == pytest.approx(4 / 6)
    assert metric_name("Urban land / built-up") == "urban_land_built_up"


def test_best_and_convergence_epochs() -> None:
    history = [
        {"epoch": 1.0, "val_miou": 0.40},
        {"epoch": 2.0, "val_miou": 0.61},
        {"epoch": 3.0, "val_miou": float("nan")},
        {"epoch": 4.0, "val_miou": 0.70},
        {"epoch": 5.0, "val_miou": 0.70},
    ]
    assert best_epoch(history, "val_miou") == 4  # ties keep the first
    assert convergence_epoch(history, 0.60) == 2
    assert convergence_epoch(history, 0.90) is None


class Killed(Exception):
    pass


class DiesAtStep(SegmentationTask):
    """Dies once, mid-epoch, just after a checkpoint: the stand-in for a SIGKILL."""

    def __init__(self, inner: SegmentationTask, step: int) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls, self.step = 0, step

    def training_loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> Any:
        if self.calls == self.step:
            raise Killed
        self.calls += 1
        return super().training_loss(model, batch, generator)


def _finetune(store_dir: Path, checkpoints: Path, workers: int, dies_at: int | None = None) -> Any:
    from pipeline.models.segmenters import create_segmenter
    from pipeline.train.engine import EngineSettings, fit

    store = TileStore(store_dir)
    torch.manual_seed(0)
    model = create_segmenter("resnet_demo", len(store.meta.class_names), 128)
    task = SegmentationTask(
        model,
        store.meta.class_names,
        store.meta.ignore_index,
        (0, 1, 2, 3, 4),
        normalisation_for("random", "imagenet"),
        128,
    )
    settings = EngineSettings(
        epochs=3,
        batch_size=2,
        lr_backbone=1e-3,
        lr_head=1e-3,
        weight_decay=0.0,
        warmup_epochs=1,
        seed=0,
        checkpoint_dir=checkpoints,
        checkpoint_every=2,
        num_workers=workers,
        progress=False,
        device="cpu",
        best_metric="val_miou",
    )
    train = SegmentationTiles(
        store, store.rows("train"), training_augmentation(128, True, True), seed=0
    )
    val = SegmentationTiles(store, store.rows("val"))
    return fit(task if dies_at is None else DiesAtStep(task, dies_at), train, val, settings)


def _nan_as_none(history: list[dict[str, float]]) -> list[dict[str, float | None]]:
    return [{k: None if math.isnan(v) else v for k, v in row.items()} for row in history]


@pytest.mark.slow
def test_a_killed_finetuning_resumes_to_the_same_curves_and_best_weights(
    small_store: Path, tmp_path: Path
) -> None:
    from pipeline.train.engine import load_best

    whole = _finetune(small_store, tmp_path / "whole", workers=2)
    with pytest.raises(Killed):
        _finetune(small_store, tmp_path / "killed", workers=0, dies_at=4)  # epoch 2, step 5
    resumed = _finetune(small_store, tmp_path / "killed", workers=0)
    assert resumed.resumed_from == 4
    # Augmentations drawn in 2 workers, then in the main process after a resume: the same.
    assert _nan_as_none(resumed.history) == _nan_as_none(whole.history)
    assert resumed.best_epoch == whole.best_epoch == best_epoch(whole.history, "val_miou")
    a, b = load_best(tmp_path / "whole"), load_best(tmp_path / "killed")
    assert a["epoch"] == whole.best_epoch
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


class SplitsOnly:
    """A tile store's split lookup, nothing else."""

    directory = layout.tiles_dir(Path(), "loveda")

    def __init__(self, splits: dict[str, int]) -> None:
        self.splits = splits

    def rows(self, split: str) -> np.ndarray:
        return np.arange(self.splits.get(split, 0))


def test_evaluation_falls_back_to_val_only_where_test_labels_are_hidden() -> None:
    from pipeline.errors import DataError
    from pipeline.flows.finetune import evaluation_rows

    split, rows, note = evaluation_rows(SplitsOnly({"test": 3, "val": 2}), "landcoverai")  # type: ignore[arg-type]
    assert (split, len(rows), note) == ("test", 3, None)
    # LoveDA: its Test tiles are stored as "predict" (no masks).
    split, rows, note = evaluation_rows(SplitsOnly({"predict": 5, "val": 2}), "loveda")  # type: ignore[arg-type]
    assert (split, len(rows)) == ("val", 2)
    assert note is not None
    assert note.startswith("loveda has no labelled test tiles")
    with pytest.raises(DataError, match="no labelled test or val tiles"):
        evaluation_rows(SplitsOnly({"predict": 5}), "loveda")  # type: ignore[arg-type]


@pytest.mark.slow
def test_loader_workers_survive_a_prefect_flow_in_the_same_process(small_store: Path) -> None:
    """Every stage trains inside a Prefect flow: its forked workers must exit cleanly."""
    from prefect import flow

    @flow
    def nothing() -> int:
        return 1

    assert nothing() == 1
    loader = DataLoader(tiles(small_store), batch_size=2, num_workers=2, worker_init_fn=seed_worker)
    assert sum(len(images) for images, _ in loader) == len(loader.dataset)  # type: ignore[arg-type]
