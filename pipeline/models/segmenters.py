"""Segmenters: a registry backbone (``encoder``, the part initialisations load into) and a new
decoder; logits at the input resolution.

- ViT: the patch tokens of 4 evenly spaced blocks (timm ``forward_intermediates``), each
  projected by a 1x1 conv, concatenated, fused, and upsampled twice by conv blocks; the logits
  are then interpolated from stride 14/4 to the input size.
- ResNet: a U-Net over the stride 4, 8, 16 and 32 features: from stride 32 up, each step
  upsamples 2x, concatenates the skip feature and applies two conv3x3-BN-ReLU; a 1x1 conv
  classifies at stride 4 and the logits are interpolated to the input size.

The encoder is built exactly as ``create_backbone`` builds it, so the state dicts the weights
stage writes load into it strictly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.backbones import BACKBONES, create_backbone

VIT_LEVELS = 4


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def evenly_spaced_blocks(depth: int, levels: int = VIT_LEVELS) -> list[int]:
    """Block indices ending at the last one: depth 12 -> [2, 5, 8, 11], depth 4 -> [0, 1, 2, 3]."""
    if depth < levels:
        raise ValueError(f"a ViT of depth {depth} has fewer than {levels} blocks")
    step = depth / levels
    return [round(step * (k + 1)) - 1 for k in range(levels)]


class Segmenter(nn.Module):
    """Common surface: ``encoder`` (initialisations load into it) and ``decoder``."""

    encoder: nn.Module
    decoder: nn.Module
    num_classes: int

    def features(self, images: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        logits = self.decoder(self.features(images))
        upsampled: Tensor = F.interpolate(
            logits, size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return upsampled


class MultiLevelDecoder(nn.Module):
    """Same-resolution ViT levels -> 1x1 projections, concatenated and fused, upsampled 4x."""

    def __init__(self, dim: int, levels: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.project = nn.ModuleList(conv_bn_relu(dim, width, kernel=1) for _ in range(levels))
        self.fuse = conv_bn_relu(levels * width, width)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(width, width // 2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(width // 2, width // 4),
        )
        self.classify = nn.Conv2d(width // 4, num_classes, 1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        projected = [project(level) for project, level in zip(self.project, levels, strict=True)]
        out: Tensor = self.classify(self.up(self.fuse(torch.cat(projected, dim=1))))
        return out


class ViTSegmenter(Segmenter):
    def __init__(self, backbone: str, num_classes: int, input_size: int, width: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        encoder: Any = create_backbone(backbone, input_size)
        self.encoder = encoder
        self.blocks = evenly_spaced_blocks(len(encoder.blocks))
        self.decoder = MultiLevelDecoder(encoder.embed_dim, len(self.blocks), width, num_classes)

    def features(self, images: Tensor) -> list[Tensor]:
        levels: list[Tensor] = self.encoder.forward_intermediates(  # type: ignore[operator]
            images, indices=self.blocks, output_fmt="NCHW", intermediates_only=True
        )
        return levels


class UNetDecoder(nn.Module):
    """Stride 32 -> 4: upsample, concatenate the skip, two conv blocks; classify at stride 4."""

    def __init__(
        self, channels: list[int], widths: tuple[int, ...], num_classes: int
    ) -> None:  # channels: stride 4, 8, 16, 32
        super().__init__()
        if len(widths) != len(channels) - 1:
            raise ValueError(f"{len(widths)} decoder widths for {len(channels)} levels")
        stages = []
        previous = channels[-1]
        for skip, width in zip(reversed(channels[:-1]), widths, strict=True):
            stages.append(
                nn.Sequential(conv_bn_relu(previous + skip, width), conv_bn_relu(width, width))
            )
            previous = width
        self.stages = nn.ModuleList(stages)
        self.classify = nn.Conv2d(previous, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        out: Tensor = self.classify(x)
        return out


class ResNetUNet(Segmenter):
    def __init__(
        self, backbone: str, num_classes: int, input_size: int, widths: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        encoder: Any = create_backbone(backbone, input_size)
        self.encoder = encoder
        reductions = encoder.feature_info.reduction()
        # The stride-2 stem output is left out: the U-Net starts at stride 4.
        self.levels = [reductions.index(stride) for stride in (4, 8, 16, 32)]
        channels = [encoder.feature_info.channels()[i] for i in self.levels]
        self.decoder = UNetDecoder(channels, widths, num_classes)

    def features(self, images: Tensor) -> list[Tensor]:
        outputs = self.encoder(images)
        return [outputs[i] for i in self.levels]


# family -> (backbone, classes, input size, decoder width(s)) -> segmenter; the widths per
# backbone size: the paper's backbones get a wider decoder than the demo variants.
SEGMENTERS: dict[str, Callable[[str, int, int], Segmenter]] = {
    "vit": lambda b, c, s: ViTSegmenter(b, c, s, width=128 if b == "vits14" else 64),
    "resnet": lambda b, c, s: ResNetUNet(
        b, c, s, widths=(256, 128, 64) if b == "resnet50" else (128, 64, 32)
    ),
}


def create_segmenter(backbone: str, num_classes: int, input_size: int) -> Segmenter:
    """The segmenter of ``backbone`` (a registry name) with randomly initialised weights."""
    return SEGMENTERS[BACKBONES[backbone].family](backbone, num_classes, input_size)
