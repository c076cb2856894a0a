"""Starting weights: published ones through timm, a local file, or none.

Local files are read as safetensors, or with ``torch.load(weights_only=True)``: a checkpoint is
data, never code to run. Every load reports missing and unexpected keys and fails when any
backbone weight is missing (a silent partial load is the classic failure here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from pipeline.errors import PipelineError
from pipeline.files import atomic_write
from pipeline.models.backbones import BACKBONES

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


# Keys of published ViT layouts that timm's checkpoint filter drops without a word; they are put
# back so that the load reports them as unexpected (DINOv2's release holds its iBOT mask token).
VIT_KEYS_DROPPED_BY_FILTER = ("mask_token",)


def fit_to_encoder(
    state: Mapping[str, Tensor], encoder: nn.Module, family: str
) -> dict[str, Tensor]:
    """A published state dict in the registry encoder's layout.

    ViTs go through timm's filter, which resamples the positional embedding to the encoder's
    grid (DINOv2's 518 to the crop size) and converts DINOv2's release layout; the keys it
    drops silently come back, to be reported as unexpected. Other families load as they are.
    """
    fitted = dict(state)  # a copy: timm's filter pops keys from what it is given
    if family != "vit":
        return fitted
    from timm.models.vision_transformer import checkpoint_filter_fn

    dropped = {k: fitted[k] for k in VIT_KEYS_DROPPED_BY_FILTER if k in fitted}
    resampled: dict[str, Tensor] = checkpoint_filter_fn(fitted, encoder)  # type: ignore[arg-type]
    return {**resampled, **dropped}


def published_state(timm_name: str, advice: str) -> dict[str, Tensor]:
    """The weights timm publishes as ``timm_name`` (through its hub); offline, an error ending
    in ``advice``: which parameter takes a local copy."""
    try:
        reference = timm.create_model(timm_name, pretrained=True, num_classes=0)
    except Exception as exc:  # hub errors come in many types; all mean "not here"
        raise WeightsError(
            f"{timm_name}: cannot fetch the published weights ({type(exc).__name__}); "
            f"offline? {advice}"
        ) from None
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


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
        state = fit_to_encoder(read_state_dict(weights_file), encoder, spec.family)
        return load_into(encoder, state, str(weights_file))
    if init == "none":
        return None
    tag = spec.published_tag  # the published pretext starting point (README, "Pretraining")
    if tag is None:
        raise WeightsError(
            f"{backbone}: no published weights; set {param}.init: none "
            f"(or {param}.weights_file.{backbone})"
        )
    name = f"{spec.timm_name}.{tag}"
    state = published_state(name, f"Set {param}.weights_file.{backbone} to a local copy")
    return load_into(encoder, fit_to_encoder(state, encoder, spec.family), name)


def save_encoder(encoder: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """The kept encoder's weights as safetensors, written atomically (synced, then renamed; a
    full disk raises a DiskFullError naming ``path``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_write(path, "wb") as handle:
        handle.write(with_sorted_metadata(save(state, metadata=dict(metadata or {}))))


def with_sorted_metadata(blob: bytes) -> bytes:
    """safetensors writes its metadata from a hash map, in an order that changes from process
    to process: sorted, the same weights are the same bytes (content hashes stay put)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" not in header:
        return blob
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # never seen: the same compact JSON, reordered, is as long
        raise ValueError(f"safetensors header of {size} bytes re-encoded as {len(text)}")
    return blob[:8] + text.ljust(size) + blob[8 + size :]
