"""Starting weights: published ones through timm, a local file, or none.

Local files are read as safetensors, or with ``torch.load(weights_only=True)``: a checkpoint is
data, never code to run. Every load reports missing and unexpected keys and fails when any
backbone weight is missing (a silent partial load is the classic failure here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.errors import PipelineError
from pipeline.models.backbones import BACKBONES

# The published pretext starting points (shared/notes/weights.md).
PUBLISHED_TAG = {"vits14": "lvd142m", "resnet50": "tv_in1k"}
CONTAINER_KEYS = ("state_dict", "model", "module", "teacher")


class WeightsError(PipelineError):
    """Weights cannot be read, do not fit the model, or cannot be fetched."""


@dataclass(frozen=True)
class LoadReport:
    source: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors or torch file, unwrapped from the usual containers."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise WeightsError(f"{path}: not a readable weights file ({reason})") from None
    except Exception as exc:  # weights_only refuses pickled objects with their own error types
        raise WeightsError(f"{path}: refused, not plain tensors ({type(exc).__name__})") from None
    while isinstance(state, Mapping) and any(k in state for k in CONTAINER_KEYS):
        state = state[next(k for k in CONTAINER_KEYS if k in state)]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a mapping of tensor names to tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_into(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    ignore: tuple[str, ...] = ("fc.", "head."),
) -> LoadReport:
    """Load ``state`` into ``module``; fail, naming the keys, if any of its weights is missing."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        key = mismatched[0]
        raise WeightsError(
            f"{source}: {len(mismatched)} tensors have other shapes than the model's, e.g. "
            f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        )
    result = module.load_state_dict(state, strict=False)
    missing = tuple(k for k in result.missing_keys if not k.startswith(ignore))
    if missing:
        raise WeightsError(
            f"{source}: {len(missing)} backbone weights missing, e.g. {list(missing[:3])}"
        )
    return LoadReport(
        source, len(state) - len(result.unexpected_keys), (), tuple(result.unexpected_keys)
    )


def _fit_vit_checkpoint(state: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    """Resample a ViT checkpoint's positional embedding to the model's grid (518 -> 224)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    fitted: dict[str, Tensor] = checkpoint_filter_fn(state, model)
    return fitted


def load_starting_weights(
    encoder: nn.Module,
    backbone: str,
    init: str,
    weights_file: Path | None,
    param: str = "pretrain",
) -> LoadReport | None:
    """Put the starting weights into ``encoder`` (a registry backbone); None for random init."""
    spec = BACKBONES[backbone]
    if weights_file is not None:
        state = read_state_dict(weights_file)
        if spec.family == "vit":
            state = _fit_vit_checkpoint(state, encoder)
        return load_into(encoder, state, str(weights_file))
    if init == "none":
        return None
    tag = PUBLISHED_TAG.get(backbone)
    if tag is None:
        raise WeightsError(
            f"{backbone}: no published weights; set {param}.init: none "
            f"(or {param}.weights_file.{backbone})"
        )
    name = f"{spec.timm_name}.{tag}"
    try:
        reference = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:  # hub errors come in many types; all mean "not here"
        raise WeightsError(
            f"{name}: cannot fetch the published weights ({type(exc).__name__}); offline? "
            f"Set {param}.weights_file.{backbone} to a local copy"
        ) from None
    state = reference.state_dict()
    if spec.family == "vit":
        state = _fit_vit_checkpoint(state, encoder)
    return load_into(encoder, state, name)


def save_encoder(encoder: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """The kept encoder's weights as safetensors (written to a temporary name, then renamed)."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, tmp, metadata=dict(metadata or {}))
    tmp.replace(path)
