"""Segmenters over the backbone registry: logits at input resolution, the encoder in the
backbone's exact layout (so initialisations load strictly), the decoder on the levels the
paper names."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.backbones import BACKBONES, create_backbone
from pipeline.models.segmenters import (
    ResNetUNet,
    ViTSegmenter,
    create_segmenter,
    evenly_spaced_blocks,
)
from pipeline.zoo import input_multiple

SMALL = ["resnet_demo", "vit_tiny_demo"]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_the_encoder_has_the_backbones_exact_layout(backbone: str) -> None:
    size = 2 * input_multiple(backbone, pretext=False)
    segmenter = create_segmenter(backbone, 5, size)
    reference = create_backbone(backbone, size).state_dict()
    own = segmenter.encoder.state_dict()
    assert own.keys() == reference.keys()
    assert all(own[k].shape == reference[k].shape for k in own)


@pytest.mark.parametrize("backbone", SMALL)
@pytest.mark.parametrize("classes", [2, 7])
def test_logits_come_at_the_input_resolution(backbone: str, classes: int) -> None:
    size = 4 * input_multiple(backbone, pretext=False)
    segmenter = create_segmenter(backbone, classes, size)
    logits = segmenter(torch.randn(2, 3, size, size))
    assert logits.shape == (2, classes, size, size)
    logits.sum().backward()
    # Every parameter that the decoder adds takes part (no dead branch).
    assert all(p.grad is not None for p in segmenter.decoder.parameters())


def test_windows_of_another_size_than_built_for_work_for_the_vit() -> None:
    # dynamic_img_size: a ViT built at 112 runs on 56 (positional embedding interpolated).
    segmenter = create_segmenter("vit_tiny_demo", 3, 112)
    assert segmenter(torch.randn(1, 3, 56, 56)).shape == (1, 3, 56, 56)


def test_vit_decodes_four_evenly_spaced_blocks() -> None:
    assert evenly_spaced_blocks(12) == [2, 5, 8, 11]  # ViT-S/14
    assert evenly_spaced_blocks(4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="fewer than 4"):
        evenly_spaced_blocks(3)
    segmenter = create_segmenter("vit_tiny_demo", 3, 56)
    assert isinstance(segmenter, ViTSegmenter)
    levels = segmenter.features(torch.randn(1, 3, 56, 56))
    assert len(levels) == 4
    assert all(level.shape[-2:] == (4, 4) for level in levels)


def test_resnet_unet_reads_strides_4_to_32() -> None:
    segmenter = create_segmenter("resnet_demo", 3, 64)
    assert isinstance(segmenter, ResNetUNet)
    levels = segmenter.features(torch.randn(1, 3, 64, 64))
    assert [64 // level.shape[-1] for level in levels] == [4, 8, 16, 32]
