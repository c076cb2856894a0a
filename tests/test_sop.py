from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.train.losses import sigmoid_focal_loss
from pipeline.train.metrics import (
    box_decoded_iou,
    box_iou,
    centred_box_iou,
    decode_box,
    mask_iou,
)
from pipeline.train.pretrain import color_jitter
from pipeline.train.sop import positions_for, sample_overlap


@st.composite
def sampler_cases(draw: st.DrawFn) -> tuple[torch.Tensor, int, int, int]:
    batch = draw(st.integers(1, 5))
    source = draw(st.integers(1, 40))
    subimage = draw(st.integers(1, source))
    tile = draw(st.sampled_from([source, source + 7, 2 * source]))
    seed = draw(st.integers(0, 2**31 - 1))
    tiles = torch.randint(
        0,
        256,
        (batch, tile, tile, 3),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(seed),
    )
    return tiles, source, subimage, seed


@settings(max_examples=150, deadline=None)
@given(case=sampler_cases())
def test_mask_is_the_crop_rectangle_and_the_subimage_its_pixels(
    case: tuple[torch.Tensor, int, int, int],
) -> None:
    tiles, source, subimage, seed = case
    out = sample_overlap(tiles, source, subimage, torch.Generator().manual_seed(seed))
    batch = tiles.shape[0]
    assert out.source.shape == (batch, 3, source, source)
    assert out.subimage.shape == (batch, 3, subimage, subimage)
    assert out.target.shape == (batch, 1, source, source)
    for b in range(batch):
        top, left = out.boxes[b].tolist()
        assert 0 <= top <= source - subimage
        assert 0 <= left <= source - subimage
        expected = torch.zeros(source, source)
        expected[top : top + subimage, left : left + subimage] = 1
        assert torch.equal(out.target[b, 0], expected)
        inside = out.source[b][:, out.target[b, 0].bool()].reshape(3, subimage, subimage)
        assert torch.equal(out.subimage[b], inside)


def test_no_resize_when_the_tile_is_the_source_size() -> None:
    tiles = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    out = sample_overlap(tiles, 16, 8, torch.Generator().manual_seed(0))
    assert torch.equal(out.source, tiles.permute(0, 3, 1, 2).float() / 255)


def test_positions_are_uniform_and_seeded() -> None:
    tiles = torch.zeros(4000, 4, 4, 3, dtype=torch.uint8)
    first = sample_overlap(tiles, 4, 2, torch.Generator().manual_seed(1)).boxes
    again = sample_overlap(tiles, 4, 2, torch.Generator().manual_seed(1)).boxes
    other = sample_overlap(tiles, 4, 2, torch.Generator().manual_seed(2)).boxes
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    counts = torch.bincount(first[:, 0] * 3 + first[:, 1], minlength=9).float()
    assert counts.min() > 0.8 * 4000 / 9  # 9 legal positions, each about equally likely


def test_subimage_larger_than_source_is_refused() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        sample_overlap(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), 8, 9)


def test_focal_loss_against_the_formula() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = torch.where(target > 0, p, 1 - p)
    assert sigmoid_focal_loss(logits, target, gamma=0.0) == pytest.approx(bce.mean().item())
    expected = (bce * (1 - p_t) ** 2).mean().item()
    assert sigmoid_focal_loss(logits, target, gamma=2.0) == pytest.approx(expected)
    weights = torch.where(target > 0, 0.25, 0.75)
    expected_alpha = (bce * (1 - p_t) ** 2 * weights).mean().item()
    assert sigmoid_focal_loss(logits, target, 2.0, 0.25) == pytest.approx(expected_alpha)


def test_box_iou_by_hand() -> None:
    corner, centre = torch.tensor([[0, 0]]), torch.tensor([[56, 56]])
    # 112-pixel boxes offset by 56 in both axes: 56x56 overlap over 2*112^2 - 56^2.
    assert box_iou(corner, centre, 112).item() == pytest.approx(3136 / 21952)
    assert box_iou(centre, centre, 112).item() == 1.0
    assert box_iou(torch.tensor([[0, 0]]), torch.tensor([[112, 0]]), 112).item() == 0.0
    assert centred_box_iou(centre, 224, 112).item() == 1.0


def test_centred_baseline_matches_the_position_prior() -> None:
    """Averaged over every position, the centred box scores about 0.40 (as the paper states)."""
    for source, subimage in ((224, 112), (112, 56)):
        positions = torch.arange(source - subimage + 1)
        boxes = torch.cartesian_prod(positions, positions)
        mean = centred_box_iou(boxes, source, subimage).mean().item()
        assert mean == pytest.approx(0.40, abs=0.02)


def test_mask_and_box_decoding_from_perfect_and_useless_logits() -> None:
    tiles = torch.zeros(6, 32, 32, 3, dtype=torch.uint8)
    out = sample_overlap(tiles, 32, 12, torch.Generator().manual_seed(3))
    perfect = (out.target * 2 - 1) * 20
    assert torch.equal(mask_iou(perfect, out.target), torch.ones(6))
    assert torch.equal(decode_box(perfect, 12), out.boxes)
    assert torch.equal(box_decoded_iou(perfect, out.boxes, 12), torch.ones(6))
    nothing = torch.full_like(perfect, -20.0)
    assert torch.equal(mask_iou(nothing, out.target), torch.zeros(6))
    half = perfect.clone()
    half[..., :16] = -20  # left half predicted empty
    # Inside the target the prediction keeps exactly its right half: IoU = that share.
    expected = (out.target[:, 0, :, 16:].sum((1, 2)) / out.target[:, 0].sum((1, 2))).tolist()
    assert mask_iou(half, out.target).tolist() == pytest.approx(expected)
    assert math.isfinite(box_decoded_iou(nothing, out.boxes, 12).mean().item())


@given(salt=st.integers(0, 2**31), positions=st.integers(1, 200), start=st.integers(0, 10**6))
def test_validation_corners_are_a_function_of_the_index_alone(
    salt: int, positions: int, start: int
) -> None:
    indices = torch.arange(start, start + 16)
    corners = positions_for(indices, salt, positions)
    assert corners.shape == (16, 2)
    assert int(corners.min()) >= 0
    assert int(corners.max()) < positions
    shuffled = torch.randperm(16)
    assert torch.equal(positions_for(indices[shuffled], salt, positions), corners[shuffled])


def test_validation_corners_spread_over_every_position() -> None:
    corners = positions_for(torch.arange(20_000), 20260101, 57)
    counts = torch.bincount(corners.reshape(-1), minlength=57).float()
    assert counts.min() > 0.8 * counts.mean()
    assert counts.max() < 1.2 * counts.mean()


def test_given_corners_are_used_and_checked() -> None:
    tiles = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    corners = torch.tensor([[0, 0], [32, 10]])
    pairs = sample_overlap(tiles, 64, 32, top_left=corners)
    assert torch.equal(pairs.boxes, corners)
    assert pairs.target[1, 0, 32:, 10:42].all()
    assert pairs.target[1].sum() == 32 * 32
    with pytest.raises(ValueError, match=r"crop corners must lie in \[0, 33\)"):
        sample_overlap(tiles, 64, 32, top_left=torch.tensor([[0, 0], [33, 0]]))


def test_color_jitter_changes_each_image_within_bounds() -> None:
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    jittered = color_jitter(images, 0.4, torch.Generator().manual_seed(1))
    assert jittered.shape == images.shape
    assert float(jittered.min()) >= 0.0
    assert float(jittered.max()) <= 1.0
    assert all(not torch.allclose(a, b) for a, b in zip(jittered, images, strict=True))
    again = color_jitter(images, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(jittered, again)
    assert torch.allclose(color_jitter(images, 0.0, torch.Generator()), images, atol=1e-6)
