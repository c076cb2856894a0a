"""Backbone registry: a name -> a constructor, as timm does it.

The names are exactly those ``pipeline.config.BACKBONE_INPUT_MULTIPLE`` validates. The demo
variants are the same timm classes, narrower and shallower, so that the demo and the CPU tests
run the real architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
from torch import nn

from pipeline.config import BACKBONE_INPUT_MULTIPLE


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "vit" or "resnet"
    timm_name: str  # the timm architecture, also the key of its pretrained weights
    build: Callable[[int], nn.Module]  # img_size -> module with random weights


def _vit(timm_name: str, **kwargs: Any) -> Callable[[int], nn.Module]:
    def build(img_size: int) -> nn.Module:
        # img_size always given: the DINOv2 default is 518 (1370 tokens, ~10x the compute).
        return timm.create_model(
            timm_name,
            pretrained=False,
            img_size=img_size,
            num_classes=0,
            dynamic_img_size=True,
            **kwargs,
        )

    return build


def _resnet(timm_name: str) -> Callable[[int], nn.Module]:
    def build(img_size: int) -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, features_only=True)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("vits14", "vit", "vit_small_patch14_dinov2", _vit("vit_small_patch14_dinov2")),
        BackboneSpec(
            "vit_tiny_demo",
            "vit",
            "vit_small_patch14_dinov2",
            # LayerScale off (0, not None: timm drops None kwargs and keeps DINOv2's 1e-5,
            # under which blocks start as near-identities and a small ViT from random weights
            # sat on the position prior on a CPU budget).
            _vit("vit_small_patch14_dinov2", embed_dim=192, depth=4, num_heads=3, init_values=0),
        ),
        BackboneSpec("resnet50", "resnet", "resnet50", _resnet("resnet50")),
        BackboneSpec("resnet_demo", "resnet", "resnet18", _resnet("resnet18")),
    )
}
assert set(BACKBONES) == set(BACKBONE_INPUT_MULTIPLE)


def create_backbone(name: str, img_size: int) -> nn.Module:
    return BACKBONES[name].build(img_size)
