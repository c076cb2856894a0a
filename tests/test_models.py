from __future__ import annotations

import pytest
import torch

from pipeline import zoo
from pipeline.models.backbones import BACKBONES, FAMILY_BUILDERS, create_backbone
from pipeline.models.overlap import (
    SINCOS_AMPLITUDE,
    DualEncoderOverlapModel,
    ViTOverlapModel,
    count_parameters,
    create_overlap_model,
)

DEMO = ["vit_tiny_demo", "resnet_demo"]


@pytest.mark.parametrize("name", sorted(zoo.BACKBONES))
def test_every_zoo_backbone_has_its_family_constructor(name: str) -> None:
    assert zoo.BACKBONES[name].family in FAMILY_BUILDERS
    assert "-" not in name  # model names split at the first '-'


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds(name: str) -> None:
    model = create_backbone(name, 224)
    assert count_parameters(model) > 0
    if name == "vits14":
        # ViT-S/14 as DINOv2 ships it: 21.6M parameters (classifier removed), dim 384.
        assert model.embed_dim == 384
        assert 21.5e6 < count_parameters(model) < 21.8e6


@pytest.mark.parametrize("name", DEMO)
@pytest.mark.parametrize(("source", "subimage"), [(224, 112), (224, 56), (112, 56)])
def test_overlap_logits_cover_the_source(name: str, source: int, subimage: int) -> None:
    model = create_overlap_model(name, source, subimage).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, source, source), torch.rand(2, 3, subimage, subimage))
    assert logits.shape == (2, 1, source, source)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["vits14", "resnet50"])
def test_full_size_models_at_the_paper_sizes(name: str) -> None:
    model = create_overlap_model(name, 224, 112).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 224, 224), torch.rand(1, 3, 112, 112))
    assert logits.shape == (1, 1, 224, 224)


@pytest.mark.parametrize("name", DEMO)
def test_the_mask_depends_on_the_subimage_and_gradients_reach_every_part(name: str) -> None:
    torch.manual_seed(0)
    model = create_overlap_model(name, 112, 56).eval()
    source = torch.rand(2, 3, 112, 112)
    first = model(source, torch.rand(2, 3, 56, 56))
    second = model(source, torch.rand(2, 3, 56, 56))
    # The subimage reaches the source's tokens or map. At random init the DINOv2 LayerScale
    # (1e-5) keeps token mixing tiny, so ask for any difference, not a large one.
    assert not torch.equal(first, second)
    model.train()
    model(source, torch.rand(2, 3, 56, 56)).mean().backward()
    if isinstance(model, ViTOverlapModel):
        parts = [model.sep_token, model.segment_embed, model.encoder.pos_embed]
    else:
        assert isinstance(model, DualEncoderOverlapModel)
        parts = [next(model.encoder.parameters()), next(model.subimage_encoder.parameters())]
    for parameter in parts:
        assert parameter.grad is not None
        assert parameter.grad.abs().sum() > 0


def test_vit_sequence_is_cls_source_sep_subimage() -> None:
    model = create_overlap_model("vit_tiny_demo", 224, 112)
    assert isinstance(model, ViTOverlapModel)
    seen: list[int] = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 224, 224), torch.rand(1, 3, 112, 112))
    assert seen == [1 + 16 * 16 + 1 + 8 * 8]


def test_resnet_encoders_shared_or_separate() -> None:
    separate = create_overlap_model("resnet_demo", 112, 56)
    shared = create_overlap_model("resnet_demo", 112, 56, share_encoders=True)
    assert isinstance(separate, DualEncoderOverlapModel)
    assert isinstance(shared, DualEncoderOverlapModel)
    assert separate.subimage_encoder is not separate.encoder
    assert shared.subimage_encoder is shared.encoder
    assert count_parameters(shared) < count_parameters(separate)


def test_a_random_vit_starts_with_a_sine_cosine_position_table() -> None:
    """From random weights the patch positions must be visible next to the patch content."""
    model = create_overlap_model("vit_tiny_demo", 112, 56)
    table = model.encoder.pos_embed[0, model.encoder.num_prefix_tokens :]  # type: ignore[index]
    assert table.shape == (64, 192)  # 8x8 patches of 14 at 112
    quarter = 192 // 4
    # Patch (0, 0): every sine is 0 and every cosine is the amplitude.
    expected = torch.tensor(([0.0] * quarter + [SINCOS_AMPLITUDE] * quarter) * 2)
    assert torch.allclose(table[0], expected)
    # Rows and columns: the first quarter follows the column, the third the row.
    grid = table.reshape(8, 8, 192)
    assert torch.allclose(grid[0, :, 0], SINCOS_AMPLITUDE * torch.sin(torch.arange(8.0)))
    assert torch.allclose(grid[:, 0, 2 * quarter], SINCOS_AMPLITUDE * torch.sin(torch.arange(8.0)))
    assert 0.4 < float(table.pow(2).mean().sqrt()) < 0.6
    assert table.requires_grad  # a starting point, learnt from there
