from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.train.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou


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
