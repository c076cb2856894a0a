"""The overlap (pretext) models: source + subimage -> logits of the subimage's mask.

After pretraining only ``encoder`` is kept (the ViT, or the ResNet's source encoder A); the
decoder, and the ResNet's subimage encoder B, are thrown away, as the paper does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.backbones import BACKBONES, create_backbone


class MaskDecoder(nn.Module):
    """Blocks of conv3x3-BN-ReLU, each after a 2x bilinear upsampling, then a 1x1 conv to one
    channel; the logits are upsampled to the source size (decoding at full resolution would cost
    more than the encoder on a CPU)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (128, 64, 32)) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            blocks += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(previous, 1, 1)

    def forward(self, features: Tensor, size: int) -> Tensor:
        logits = self.head(self.blocks(features))
        upsampled: Tensor = F.interpolate(
            logits, size=(size, size), mode="bilinear", align_corners=False
        )
        return upsampled


class ViTOverlapModel(nn.Module):
    """[CLS] + source tokens + a learned [SEP] + subimage tokens, through one ViT.

    Each image's tokens carry the positional embedding interpolated to its own patch grid; the
    subimage tokens also get a learned segment embedding that marks them as the subimage. The
    source's output tokens, back on their grid, are decoded to the mask.
    """

    def __init__(
        self, backbone: str, source_size: int, decoder_channels: tuple[int, ...] = (128, 64, 32)
    ) -> None:
        super().__init__()
        # Any: timm's ViT attributes (patch_embed, _pos_embed, blocks) are dynamic to mypy.
        encoder: Any = create_backbone(backbone, source_size)
        self.encoder = encoder
        dim = int(encoder.embed_dim)
        self.sep_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.segment_embed = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.sep_token, std=0.02)
        # A segment marker as large as the tokens themselves: a small one leaves a random-init
        # model unable to tell the two images apart for hundreds of steps.
        nn.init.trunc_normal_(self.segment_embed, std=1.0, a=-2.0, b=2.0)
        self.decoder = MaskDecoder(dim, decoder_channels)
        _mimetic_attention_init(encoder)
        _sincos_position_init(encoder)

    def forward(self, source: Tensor, subimage: Tensor) -> Tensor:
        vit: Any = self.encoder
        source_grid = vit.patch_embed(source)  # (B, h, w, D): NHWC with dynamic_img_size
        height, width = source_grid.shape[1:3]
        source_tokens = vit._pos_embed(source_grid)  # [CLS] + h*w, positions for (h, w)
        # The subimage's own [CLS] is dropped: one [CLS] per sequence.
        subimage_tokens = vit._pos_embed(vit.patch_embed(subimage))[:, vit.num_prefix_tokens :]
        batch = source.shape[0]
        tokens = torch.cat(
            [
                source_tokens,
                self.sep_token.expand(batch, -1, -1),
                subimage_tokens + self.segment_embed,
            ],
            dim=1,
        )
        tokens = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(tokens))))
        start = vit.num_prefix_tokens
        grid = tokens[:, start : start + height * width].transpose(1, 2)
        features = grid.reshape(batch, -1, height, width)
        logits: Tensor = self.decoder(features, source.shape[-1])
        return logits


def _mimetic_attention_init(vit: Any) -> None:
    """Start every block's keys equal to its queries (W_k := W_q), so attention starts out
    favouring similar tokens: what matching a subimage to its source needs ("mimetic
    initialisation", Trockman & Kolter 2023). Published weights loaded afterwards replace it;
    it matters for random starts only."""
    with torch.no_grad():
        for block in vit.blocks:
            dim = block.attn.qkv.in_features
            block.attn.qkv.weight[dim : 2 * dim].copy_(block.attn.qkv.weight[:dim])


# The table's scale: its entries' RMS is 0.7 / sqrt(2) = 0.5, near a random patch embedding's
# (about 0.6 for a normalised image), so neither position nor content dominates at the start.
SINCOS_AMPLITUDE = 0.7


def _sincos_position_init(vit: Any, amplitude: float = SINCOS_AMPLITUDE) -> None:
    """Start the patch tokens' positional embedding as a 2D sine-cosine table (as MAE fixes
    its own), learnt from there. timm starts it as noise of std 0.02: next to patch tokens of
    about 0.6, a ViT from random weights then sees almost no position, and the overlap task
    is about where things are. Measured on the demo (vit_tiny_demo, 112/56, 30 epochs, seeds
    0-2): mask IoU 0.511-0.528 against the centred-box baseline 0.433; with the noise start,
    0.148 after 20 epochs and 0.476 after 60. Published weights loaded afterwards replace it."""
    table = vit.pos_embed  # (1, prefix + h * w, dim): DINOv2 gives the [CLS] token a position
    side = math.isqrt(table.shape[1] - vit.num_prefix_tokens)
    quarter = table.shape[2] // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    angles = [axis.reshape(-1, 1).float() * frequencies for axis in (columns, rows)]
    waves = [wave for angle in angles for wave in (torch.sin(angle), torch.cos(angle))]
    with torch.no_grad():
        table[0, vit.num_prefix_tokens :] = amplitude * torch.cat(waves, dim=1)


class DualEncoderOverlapModel(nn.Module):
    """ResNet encoder A on the source, encoder B on the subimage, fused by a depthwise
    cross-correlation of B's stride-16 map slid over A's (as in Siamese trackers).

    Both maps are projected to ``fusion_channels`` and L2-normalised per position, so the
    correlation is a mean cosine similarity in [-1, 1]; it is concatenated with A's projection
    and decoded. Sharing A and B is a parameter.
    """

    STAGE = 3  # timm features_only index of the stride-16 stage

    def __init__(
        self,
        backbone: str,
        share_encoders: bool = False,
        fusion_channels: int = 256,
        decoder_channels: tuple[int, ...] = (128, 64, 32, 32),
    ) -> None:
        super().__init__()
        encoder: Any = create_backbone(backbone, 0)
        self.encoder = encoder
        subimage_encoder: Any = encoder if share_encoders else create_backbone(backbone, 0)
        self.subimage_encoder = subimage_encoder
        channels = encoder.feature_info.channels()[self.STAGE]
        # The stages past stride 16 take no part in the pretext: frozen, they keep their
        # starting weights for fine-tuning and DDP sees no parameter without a gradient.
        for module in {id(m): m for m in (encoder, subimage_encoder)}.values():
            for name in module.feature_info.module_name()[self.STAGE + 1 :]:
                module[name].requires_grad_(False)
        self.project_source = nn.Conv2d(channels, fusion_channels, 1)
        self.project_subimage = nn.Conv2d(channels, fusion_channels, 1)
        self.correlation_norm = nn.BatchNorm2d(fusion_channels)
        self.decoder = MaskDecoder(2 * fusion_channels, decoder_channels)

    def _stride16(self, encoder: Any, image: Tensor) -> Tensor:
        """Run the encoder only up to its stride-16 stage.

        The stride-32 stage is kept (fine-tuning uses it) but the pretext never reads it:
        computing it would cost a quarter of the encoder and leave parameters without
        gradients, which DDP refuses.
        """
        last = encoder.feature_info.module_name()[self.STAGE]
        for name, module in encoder.items():
            image = module(image)
            if name == last:
                break
        return image

    def forward(self, source: Tensor, subimage: Tensor) -> Tensor:
        a = F.normalize(self.project_source(self._stride16(self.encoder, source)), dim=1)
        b = F.normalize(
            self.project_subimage(self._stride16(self.subimage_encoder, subimage)), dim=1
        )
        batch, channels, height, width = a.shape
        kh, kw = b.shape[-2:]
        # Depthwise: each (sample, channel) of B is a kernel over the same (sample, channel) of A.
        correlation = F.conv2d(
            a.reshape(1, batch * channels, height, width),
            b.reshape(batch * channels, 1, kh, kw),
            padding=(kh // 2, kw // 2),
            groups=batch * channels,
        )[..., :height, :width].reshape(batch, channels, height, width) / (kh * kw)
        fused = torch.cat([a, self.correlation_norm(correlation)], dim=1)
        logits: Tensor = self.decoder(fused, source.shape[-1])
        return logits


def create_overlap_model(
    backbone: str, source_size: int, subimage_size: int, share_encoders: bool = False
) -> nn.Module:
    """The overlap model for a registry backbone at the given pretext sizes."""
    family = BACKBONES[backbone].family
    if family == "vit":
        return ViTOverlapModel(backbone, source_size)
    if subimage_size < 16:
        raise ValueError(f"subimage {subimage_size} is below the ResNet's stride-16 map")
    return DualEncoderOverlapModel(backbone, share_encoders=share_encoders)


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
