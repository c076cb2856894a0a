from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.train.segmentation_metrics import (
    confusion_matrices,
    confusion_matrix,
    iou_per_class,
    mean_iou,
)


def test_confusion_matrix_and_iou_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    matrix = confusion_matrix(predicted, target, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    # class 0: 2 hits / (3 true + 3 predicted - 2); class 1: 2 / (2 + 3 - 2); class 2: 2 / 3
    assert iou_per_class(matrix).tolist() == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert mean_iou(matrix, (0, 1, 2)) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_ignored_pixels_never_count_and_unevaluated_classes_leave_the_mean() -> None:
    target = torch.tensor([0, 0, 1, 2, 2])  # 0 is LoveDA-style no-data
    predicted = torch.tensor([1, 2, 1, 2, 1])
    matrix = confusion_matrix(predicted, target, 3, ignore_index=0)
    assert int(matrix.sum()) == 3
    assert int(matrix[0].sum()) == 0
    assert mean_iou(matrix, (1, 2)) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # DeepGlobe-style: class 2 counted in the matrix but not in the mean.
    assert mean_iou(matrix, (1,)) == pytest.approx(0.5)


def test_a_class_absent_from_truth_and_prediction_is_skipped_not_zero() -> None:
    matrix = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    assert math.isnan(float(iou_per_class(matrix)[2]))
    assert mean_iou(matrix, (0, 1, 2)) == 1.0


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 2)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=200),
    st.integers(1, 199),
)
def test_the_matrix_of_the_whole_is_the_sum_of_the_parts(
    pixels: list[tuple[int, int]], cut: int
) -> None:
    truth = torch.tensor([t for t, _ in pixels])
    guess = torch.tensor([g for _, g in pixels])
    whole = confusion_matrix(guess, truth, 4, ignore_index=3)
    parts = confusion_matrix(guess[:cut], truth[:cut], 4, ignore_index=3) + confusion_matrix(
        guess[cut:], truth[cut:], 4, ignore_index=3
    )
    assert torch.equal(whole, parts)
    assert int(whole.sum()) == sum(1 for t, _ in pixels if t != 3)


# --- DDP: the confusion matrix all-reduced over 2 gloo processes equals the hand-computed one --

NAMES = ("no-data", "building", "water", "road")
# Five 2x3 validation tiles (an odd count: the ranks get 3 and 2). Channel 0 of each image is
# the class the model predicts there; 0 in the target is the ignore index (LoveDA's no-data).
TARGETS = [
    [[1, 1, 2], [0, 0, 2]],
    [[2, 2, 2], [1, 1, 1]],
    [[1, 2, 1], [2, 1, 2]],
    [[0, 0, 0], [0, 0, 1]],
    [[1, 1, 1], [1, 1, 1]],  # the last rank's share holds no water at all
]
PREDICTED = [
    [[1, 2, 2], [3, 1, 2]],
    [[2, 2, 1], [1, 3, 1]],
    [[1, 2, 1], [2, 1, 2]],
    [[2, 2, 2], [2, 2, 1]],
    [[1, 1, 3], [1, 1, 1]],
]
# Rows: true class 0..3, columns: predicted; ignored pixels never counted, road never true.
HAND = [
    [0, 0, 0, 0],
    [0, 12, 1, 2],  # true building: 12 right, 1 as water, 2 as road
    [0, 1, 7, 0],  # true water: 7 right, 1 as building
    [0, 0, 0, 0],
]


def _validation_tiles() -> list[tuple[torch.Tensor, torch.Tensor]]:
    tiles = []
    for predicted, target in zip(PREDICTED, TARGETS, strict=True):
        image = torch.zeros(2, 3, 3, dtype=torch.uint8)
        image[..., 0] = torch.tensor(predicted, dtype=torch.uint8)
        tiles.append((image, torch.tensor(target, dtype=torch.uint8)))
    return tiles


class PredictsChannelZero(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (
            torch.nn.functional.one_hot(images[:, 0].long(), len(NAMES)).permute(0, 3, 1, 2).float()
        )


def _task() -> Any:
    from pipeline.models.inits import Normalisation
    from pipeline.train.finetune import SegmentationTask

    return SegmentationTask(
        PredictsChannelZero(), NAMES, 0, (1, 2, 3), Normalisation.raw(), window=3
    )


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    from pipeline.train import distributed
    from pipeline.train.distributed import Distributed
    from pipeline.train.engine import evaluation_sums

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    context = Distributed(rank, world, rank)
    distributed.initialise(context, torch.device("cpu"))
    try:
        task = _task()
        sums = evaluation_sums(
            task, task.model, _validation_tiles(), torch.device("cpu"), 2, context
        )
        torch.save(sums["confusion"], f"{out}/rank{rank}.pt")
    finally:
        distributed.shutdown(context)


def test_hand_computed_matrix_single_process() -> None:
    from pipeline.train.engine import evaluation_sums

    task = _task()
    sums = evaluation_sums(task, task.model, _validation_tiles(), torch.device("cpu"), 2)
    assert sums["confusion"].tolist() == HAND
    metrics = task.summarise(sums)
    # IoU = hits / (true + predicted - hits)
    assert metrics["val_iou_building"] == pytest.approx(12 / (15 + 13 - 12))
    assert metrics["val_iou_water"] == pytest.approx(7 / (8 + 8 - 7))
    # Road is predicted but never true: IoU 0, and it counts in the mean; no-data is ignored.
    assert metrics["val_iou_road"] == 0.0
    assert math.isnan(metrics["val_iou_no_data"])
    assert metrics["val_miou"] == pytest.approx((12 / 16 + 7 / 9 + 0.0) / 3)


def test_ddp_all_reduce_over_two_gloo_processes_gives_the_hand_computed_matrix(
    tmp_path: Any,
) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt").tolist() == HAND


def test_per_image_matrices_are_each_images_own_and_sum_to_the_batchs() -> None:
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (3, 5, 6), generator=generator)
    guess = torch.randint(0, 4, (3, 5, 6), generator=generator)
    per_image = confusion_matrices(guess, truth, 4, ignore_index=3)
    assert per_image.shape == (3, 4, 4)
    for i in range(3):
        assert torch.equal(per_image[i], confusion_matrix(guess[i], truth[i], 4, ignore_index=3))
    assert torch.equal(per_image.sum(0), confusion_matrix(guess, truth, 4, ignore_index=3))
