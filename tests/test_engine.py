from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from pipeline.data.store import TileStore
from pipeline.models.overlap import create_overlap_model
from pipeline.train.engine import (
    EngineSettings,
    _checkpoints,
    evaluate,
    fit,
    latest_checkpoint,
)
from pipeline.train.pretrain import OverlapTask, StoreTiles


class Tiles(Dataset[Tensor]):
    def __init__(self, n: int, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        # Blocky random textures: something a subimage can be matched by.
        small = torch.randint(0, 256, (n, size // 8, size // 8, 3), generator=generator)
        self.tiles = small.repeat_interleave(8, 1).repeat_interleave(8, 2).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Tensor:
        return self.tiles[index]


def settings(tmp: Path, epochs: int = 3, **changes: Any) -> EngineSettings:
    base = EngineSettings(
        epochs=epochs,
        batch_size=4,
        lr_backbone=1e-3,
        lr_head=1e-3,
        weight_decay=0.0,
        warmup_epochs=1,
        seed=0,
        checkpoint_dir=tmp,
        checkpoint_every=3,
        progress=False,
        device="cpu",
    )
    return replace(base, **changes)


def task(seed: int = 0) -> OverlapTask:
    torch.manual_seed(seed)
    return OverlapTask(create_overlap_model("resnet_demo", 64, 32), 64, 32)


class Killed(Exception):
    pass


class DiesAtStep(OverlapTask):
    """Dies once, mid-epoch, just after a checkpoint: the stand-in for a SIGKILL."""

    def __init__(self, inner: OverlapTask, step: int) -> None:
        super().__init__(inner.model, 64, 32)
        self.calls, self.step = 0, step

    def training_loss(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        if self.calls == self.step:
            raise Killed
        self.calls += 1
        return super().training_loss(model, batch, generator)


def test_a_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one(tmp_path: Path) -> None:
    data, val = Tiles(16, 64, 0), Tiles(8, 64, 1)
    whole = fit(task(), data, val, settings(tmp_path / "whole"))
    assert whole.resumed_from is None
    assert len(whole.history) == 3

    with pytest.raises(Killed):
        fit(DiesAtStep(task(), step=7), data, val, settings(tmp_path / "killed"))
    assert [p.name for p in _checkpoints(tmp_path / "killed")][-1] == "step-00000006.pt"
    resumed = fit(task(seed=99), data, val, settings(tmp_path / "killed"))  # fresh process
    assert resumed.resumed_from == 6
    assert resumed.history == whole.history


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    data, val = Tiles(8, 64, 0), Tiles(4, 64, 1)
    fit(task(), data, val, settings(tmp_path, epochs=2))
    newest, previous = _checkpoints(tmp_path)[-1], _checkpoints(tmp_path)[-2]
    newest.write_bytes(newest.read_bytes()[:100])
    (tmp_path / "step-99999999.pt.tmp").write_bytes(b"half-written")  # never considered
    with pytest.warns(UserWarning, match="unreadable checkpoint skipped"):
        state = latest_checkpoint(tmp_path)
    assert state is not None
    assert state["step"] == int(previous.stem.split("-")[1])


def test_validation_metrics_do_not_depend_on_the_batching() -> None:
    overlap = task()
    val, cpu = Tiles(7, 64, 1), torch.device("cpu")
    whole = evaluate(overlap, overlap.model, val, cpu, batch_size=7)
    pieces = evaluate(overlap, overlap.model, val, cpu, batch_size=2)
    assert whole.keys() == {"val_iou", "val_box_iou", "baseline_iou"}
    for key, value in whole.items():
        assert pieces[key] == pytest.approx(value, abs=1e-6)


def test_colour_jitter_breaks_the_pixel_match_only_when_asked() -> None:
    batch = Tiles(4, 64, 0).tiles
    for jitter, matches in ((0.0, True), (0.4, False)):
        overlap = OverlapTask(task().model, 64, 32, jitter=jitter)
        pairs = overlap.sample(batch, torch.Generator().manual_seed(0))
        top, left = pairs.boxes[0].tolist()
        crop = pairs.source[0, :, top : top + 32, left : left + 32]
        assert torch.allclose(crop, pairs.subimage[0]) is matches


@pytest.mark.slow
def test_a_compiled_model_trains_like_the_eager_one(tmp_path: Path) -> None:
    data, val = Tiles(8, 64, 0), Tiles(4, 64, 1)
    eager = fit(task(), data, val, settings(tmp_path / "eager", epochs=1))
    compiled = fit(
        task(),
        data,
        val,
        settings(tmp_path / "compiled", epochs=1, compile=True, compile_backend="aot_eager"),
    )
    for key, value in eager.history[-1].items():
        # The box is an argmax over near-tied scores: rounding can move one of the 4
        # validation boxes by a pixel (seen on one thread: 0.2106 against 0.2061).
        tolerance = 1e-2 if key == "val_box_iou" else 1e-4
        assert compiled.history[-1][key] == pytest.approx(value, abs=tolerance), key


# Reduced-size variants from random weights on the 8 tiles of ``small_store`` at 112/56, one
# step of 8 tiles per epoch. Final (mask IoU, box-decoded IoU) measured with seeds 0, 1, 2
# against the centred-box baseline 0.458 on these pairs:
#   resnet_demo    (0.656, 0.724), (0.697, 0.770), (0.673, 0.764)   about 90 s each
#   vit_tiny_demo  (0.588, 0.662) with seed 0, from its sine-cosine positions   about 120 s
# so mask IoU beat the baseline by 0.13 to 0.24 and box IoU by 0.20 to 0.31. The asserted
# margins (0.10 and 0.15) hold with room to spare.
LEARNING = {
    "resnet_demo": {"epochs": 150, "lr": 2e-3, "warmup_epochs": 2},
    "vit_tiny_demo": {"epochs": 500, "lr": 1e-3, "warmup_epochs": 10},
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(LEARNING))
def test_each_overlap_model_learns_beyond_the_position_prior(
    backbone: str, small_store: Path, tmp_path: Path
) -> None:
    recipe = LEARNING[backbone]
    tiles = StoreTiles(TileStore(small_store), np.arange(8))
    torch.manual_seed(0)
    task = OverlapTask(create_overlap_model(backbone, 112, 56), 112, 56)
    run = fit(
        task,
        tiles,
        tiles,
        settings(
            tmp_path / "ck",
            epochs=int(recipe["epochs"]),
            batch_size=8,
            lr_backbone=recipe["lr"],
            lr_head=recipe["lr"],
            warmup_epochs=int(recipe["warmup_epochs"]),
            checkpoint_every=10**6,
        ),
    )
    last = run.history[-1]
    assert last["val_box_iou"] > last["baseline_iou"] + 0.15, run.history[-1]
    assert last["val_iou"] > last["baseline_iou"] + 0.10, run.history[-1]
