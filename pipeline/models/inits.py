"""Fine-tuning initialisations: where each one's weights come from and how its inputs were scaled.

Sources and normalisations: README, "Fine-tuning and evaluation". Published files are fetched
from a pinned URL into a cache and checked against the SHA-256 prefix in their name (torch.hub's
convention) before they are read; timm weights come through the hub; the SOP init is this
project's own pretrain output. Offline, every published init takes a local copy through
``finetune.weights_file.<init>``. Every checkpoint is read as data (safetensors, or
``torch.load(weights_only=True)``), and every load fails when a backbone weight is missing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.errors import ChecksumError, DownloadError, TransientDownloadError
from pipeline.models.backbones import BACKBONES
from pipeline.models.weights import (
    LoadReport,
    WeightsError,
    fit_to_encoder,
    load_into,
    published_state,
    read_state_dict,
)
from pipeline.transfer import download, file_digest
from pipeline.zoo import INITS, Init

__all__ = ["INITS", "NORMALISATIONS", "Normalisation", "init_state", "load_init"]

Triple = tuple[float, float, float]

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
# SeCo's Sentinel-2 RGB quantiles (B4, B3, B2): torchgeo's _seco_transforms.
SECO_MIN: Triple = (3.0, 2.0, 0.0)
SECO_MAX: Triple = (88.0, 103.0, 129.0)


def _triple(value: float | Sequence[float]) -> Triple:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"want one value or three (RGB), got {value!r}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class Normalisation:
    """The model input ``(x - mean) / std`` for raw 8-bit RGB ``x`` in 0..255, per channel.

    Raw pixel units make every published recipe one affine map, whatever chain of scalings
    it was written as: :meth:`then` composes them, so each init's map is derived, not typed in.
    """

    mean: Triple
    std: Triple

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"want 3 means and 3 positive stds, got {self.mean}, {self.std}")

    @classmethod
    def raw(cls) -> Normalisation:
        """The identity: pixel values as they are (0..255)."""
        return cls((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @classmethod
    def imagenet(cls) -> Normalisation:
        """x/255, then ImageNet mean/std: mean = 255 m, std = 255 s."""
        return cls.raw().then(0.0, 255.0).then(IMAGENET_MEAN, IMAGENET_STD)

    def then(self, mean: float | Sequence[float], std: float | Sequence[float]) -> Normalisation:
        """This map followed by ``(y - mean) / std`` (kornia/torchvision ``Normalize``).

        With y = (x - M) / S: (y - m) / s = (x - (M + m S)) / (S s).
        """
        m, s = _triple(mean), _triple(std)
        return Normalisation(
            _triple([self.mean[c] + m[c] * self.std[c] for c in range(3)]),
            _triple([self.std[c] * s[c] for c in range(3)]),
        )

    def apply(self, images: Tensor) -> Tensor:
        """Normalise (..., 3, H, W) images in 0..255 on their device (integers become float32)."""
        if images.ndim < 3 or images.shape[-3] != 3:
            raise ValueError(f"want (..., 3, H, W) images, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float()
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(3, 1, 1)
        return (images - mean) / std


IMAGENET = Normalisation.imagenet()
# SeCo, as torchgeo's transforms write it: (x - min)/(max - min), then x*255 (Normalize with
# mean 0, std 1/255), then ImageNet mean/std. Composed: after the first step M = min,
# S = max - min; after the second S = (max - min)/255; after the third
# mean = min + m (max - min)/255 and std = s (max - min)/255, so x = min maps to (0 - m)/s and
# x = max to (255 - m)/s. Note: SeCo's own training code (seasonal-contrast,
# datasets/seco_dataset.py) stores that 0..255 result as uint8 and ToTensor divides it by 255
# again before the ImageNet step (mean = min + m (max - min), std = s (max - min)); torchgeo's
# chain, which this follows, lacks that division.
SECO = (
    Normalisation.raw()
    .then(SECO_MIN, [hi - lo for lo, hi in zip(SECO_MIN, SECO_MAX, strict=True)])
    .then(0.0, 1.0 / 255.0)
    .then(IMAGENET_MEAN, IMAGENET_STD)
)
SSL4EO = Normalisation.raw().then(0.0, 10000.0)  # reflectance units: x/10000
SATLAS = Normalisation.raw().then(0.0, 255.0)  # x/255


# The zoo's normalisation names -> their maps.
NORMALISATIONS: dict[str, Normalisation] = {
    "imagenet": IMAGENET,
    "seco": SECO,
    "ssl4eo": SSL4EO,
    "satlas": SATLAS,
}


class WeightsChecksumError(WeightsError, ChecksumError):
    """A weights file is not the pinned one (a ChecksumError, so download sets it aside)."""


def _spec(init: str) -> Init:
    try:
        return INITS[init]
    except KeyError:
        raise WeightsError(f"{init}: unknown initialisation; known: {list(INITS)}") from None


def normalisation_for(init: str, choice: str) -> Normalisation:
    """``finetune.normalisation.<init>``: the init's own pretraining map, or ImageNet's."""
    if choice == "own":
        return NORMALISATIONS[_spec(init).normalisation]
    if choice == "imagenet":
        _spec(init)
        return IMAGENET
    raise ValueError(f"normalisation for {init}: want 'own' or 'imagenet', got {choice!r}")


def _sha256_mismatch(path: Path, expected: str, progress: bool) -> str | None:
    """The file's SHA-256 when it does not start with ``expected``; None when it does."""
    actual = file_digest(path, "sha256", progress)
    return None if actual.startswith(expected) else actual


def fetch(
    spec: Init,
    cache_dir: Path,
    timeout_s: float = 60.0,
    progress: bool = True,
    retries: int = 2,
) -> Path:
    """The pinned file of a URL init in ``cache_dir``, downloaded (resumably) and verified.

    A cached file with the right hash is used without a request; one with the wrong hash, and
    every download that fails the check, is set aside as ``.bad`` and never read.
    """
    url, expected, name = spec.url, spec.sha256_prefix, spec.file_name
    if url is None or expected is None or name is None:
        raise WeightsError(f"{spec.name}: not a pinned-URL initialisation")

    def verifier(path: Path, what: str) -> None:
        actual = _sha256_mismatch(path, expected, progress)
        if actual is not None:
            raise WeightsChecksumError(
                f"{spec.name}: {url}: sha256 prefix {actual[: len(expected)]} is not the pinned "
                f"{expected} ({what}); the file is set aside as {name}.bad"
            )

    for attempt in range(retries + 1):
        try:
            return download(
                url,
                cache_dir / name,
                None,
                timeout_s=timeout_s,
                param_name=spec.param,
                progress=progress,
                verifier=verifier,
            )
        except WeightsChecksumError:
            raise
        except TransientDownloadError as exc:
            if attempt < retries:
                time.sleep(min(2.0**attempt, 30.0))  # the .part is kept and resumed
                continue
            error: DownloadError = exc
        except DownloadError as exc:
            error = exc
        reason = str(error).split(";")[0].removeprefix(f"{url}: ")
        raise WeightsError(
            f"{spec.name}: cannot download {url} ({reason}); offline? download {url} and set "
            f"{spec.param} to its path"
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _read_local(spec: Init, path: Path) -> dict[str, Tensor]:
    try:
        return read_state_dict(path)
    except WeightsError as exc:
        raise WeightsError(f"{spec.param}: {exc}") from None


def init_state(
    init: str,
    backbone: str,
    *,
    weights_file: Path | None,
    sop_encoder: Path | None,
    cache_dir: Path,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> tuple[dict[str, Tensor] | None, str]:
    """The state dict ``init`` starts ``backbone`` from (None: random) and where it came from.

    ``weights_file`` is ``finetune.weights_file.<init>`` (a local copy; for SOP it replaces
    the pretrain stage's ``sop_encoder``). Nothing is loaded here: see :func:`load_init`.
    """
    spec = _spec(init)
    if backbone not in spec.backbones:
        allowed = [name for name, s in INITS.items() if backbone in s.backbones]
        raise WeightsError(f"{init}: no such weights for {backbone}; inits for it: {allowed}")
    if spec.kind == "random":
        if weights_file is not None:
            raise WeightsError(f"{spec.param}: random initialisation reads no file; remove it")
        return None, "random initialisation"
    if spec.kind == "sop":
        if weights_file is not None:
            return _read_local(spec, weights_file), f"sop: {weights_file}"
        if sop_encoder is None or not sop_encoder.is_file():
            raise WeightsError(
                f"sop: no pretrained encoder for {backbone} at {sop_encoder}; pretrain one or set "
                f"{spec.param}"
            )
        return read_state_dict(sop_encoder), f"sop: {sop_encoder}"
    if spec.kind == "url":
        if weights_file is None:
            path = fetch(spec, cache_dir, timeout_s=timeout_s, progress=progress)
            return read_state_dict(path), f"{init}: {spec.url}"
        expected = spec.sha256_prefix
        assert expected is not None
        if weights_file.is_file():
            actual = _sha256_mismatch(weights_file, expected, progress)
            if actual is not None:
                raise WeightsError(
                    f"{spec.param}: {weights_file} has sha256 prefix {actual[: len(expected)]}, "
                    f"not the pinned {expected} of {spec.url}; point it at that file"
                )
        return _read_local(spec, weights_file), f"{init}: {weights_file} (sha256 {expected})"
    if weights_file is not None:
        return _read_local(spec, weights_file), f"{init}: {weights_file}"
    name = spec.timm_name
    assert name is not None  # kind "timm"
    advice = f"set {spec.param} to a local copy of its weights"
    return published_state(name, advice), f"{init}: timm {name}"


def load_init(
    encoder: nn.Module, backbone: str, state: Mapping[str, Tensor], source: str
) -> LoadReport:
    """Load an init's state into a registry backbone (``create_backbone(backbone, img_size)``).

    ViT checkpoints go through timm's filter first, which resamples the positional embedding
    to the encoder's grid (DINOv2's 518 to the crop size) and converts DINOv2's release layout.
    Missing backbone weights fail, naming them; classifier keys (fc., head.) are ignored;
    every other key the encoder does not have is returned in ``LoadReport.unexpected``.
    """
    return load_into(encoder, fit_to_encoder(state, encoder, BACKBONES[backbone].family), source)


def describe(report: LoadReport) -> str:
    """The whole load report as one line, every unexpected key named (for logs and MLflow)."""
    unexpected = ", ".join(report.unexpected) if report.unexpected else "none"
    return f"{report.loaded} tensors from {report.source}; unexpected keys: {unexpected}"
