"""Backbones by name: the zoo's table (``pipeline.zoo.BACKBONES``), built through timm.

A family's constructor builds every entry of that family from its timm architecture and
keyword arguments. The demo variants are the same timm classes, narrower and shallower, so
that the demo and the CPU tests run the real architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
from torch import nn

from pipeline.zoo import BACKBONES, Backbone

__all__ = ["BACKBONES", "FAMILY_BUILDERS", "create_backbone"]


def _vit(entry: Backbone, img_size: int) -> nn.Module:
    # img_size always given: the DINOv2 default is 518 (1370 tokens, ~10x the compute).
    kwargs: dict[str, Any] = dict(entry.timm_kwargs)
    return timm.create_model(
        entry.timm_name,
        pretrained=False,
        img_size=img_size,
        num_classes=0,
        dynamic_img_size=True,
        **kwargs,
    )


def _resnet(entry: Backbone, img_size: int) -> nn.Module:
    kwargs: dict[str, Any] = dict(entry.timm_kwargs)
    return timm.create_model(entry.timm_name, pretrained=False, features_only=True, **kwargs)


# Family -> (entry, img_size) -> a module with random weights.
FAMILY_BUILDERS: dict[str, Callable[[Backbone, int], nn.Module]] = {
    "vit": _vit,
    "resnet": _resnet,
}


def create_backbone(name: str, img_size: int) -> nn.Module:
    entry = BACKBONES[name]
    return FAMILY_BUILDERS[entry.family](entry, img_size)
