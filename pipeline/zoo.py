"""The one table of backbones and initialisations, and the names built from them.

Torch-free: the params schema validates against it, and the model registries
(``pipeline.models.backbones``, ``pipeline.models.inits``) build from it. A model is
``<backbone>-<init>``; an SOP init may name the pretrain run it starts from (:func:`parse_sop`:
a pretext variant, a share of the pretraining images, another pretraining dataset). Adding a
backbone of an existing family, or an init of an existing kind, is one entry here (README,
"Adding a backbone or an init").
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

Family = Literal["vit", "resnet"]
InitKind = Literal["random", "sop", "timm", "url"]
# torch.hub's convention: the hex digits after the last "-" of the file name before its suffix.
SHA256_PREFIX = re.compile(r"-([0-9a-f]{8,64})$")
DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
# The SOP init's grammar (README, "Sweeps"); a dataset name holds no '.', so never matches
# the image-fraction form. '@' is not used: DVC splits a stage name at its last '@'.
SOP_GRAMMAR = "sop, sop-<subimage>-<jitter>, sop-img<fraction> or sop-<dataset>"
IMAGES_TOKEN = re.compile(r"img(\d*\.\d+)")


@dataclass(frozen=True)
class Backbone:
    """A backbone: the timm architecture it is built from, and the sides its inputs must have."""

    name: str  # no '-': model names split at the first one
    family: Family
    timm_name: str  # the timm architecture, also the key of its published weights
    # Every input side is a multiple of these: the ViT patch; for a ResNet 8 in the pretext
    # (its stride-16 correlation map rounds a side up, so 112/56 stay shared with the ViT) and
    # the stride-32 map a U-Net decoder upsamples from.
    pretext_multiple: int
    segmentation_multiple: int
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # The timm tag of the published weights a pretrain run starts from (pretrain.init:
    # pretrained); None: there are none, the backbone starts random.
    published_tag: str | None = None
    paper: bool = False  # one of the paper's backbones (the default grid)


@dataclass(frozen=True)
class Init:
    """An initialisation: where its weights come from and the normalisation it was trained with."""

    name: str
    kind: InitKind  # random weights, this project's pretext, timm's hub, or a pinned URL
    backbones: tuple[str, ...]
    normalisation: str  # a name in pipeline.models.inits.NORMALISATIONS
    description: str
    timm_name: str | None = None  # kind "timm": the hub name, architecture.tag
    url: str | None = None  # kind "url": pinned (revision in the path, sha256 prefix in the name)

    def __post_init__(self) -> None:
        if (self.kind == "timm") != (self.timm_name is not None):
            raise ValueError(f"{self.name}: a timm name goes with kind 'timm' only")
        if (self.kind == "url") != (self.url is not None):
            raise ValueError(f"{self.name}: a URL goes with kind 'url' only")
        if self.url is not None and self.sha256_prefix is None:
            raise ValueError(f"{self.name}: {self.url} has no '-<8 hex digits>' before its suffix")

    @property
    def param(self) -> str:
        """The parameter that points this init at a local copy of its weights."""
        return f"finetune.weights_file.{self.name}"

    @property
    def file_name(self) -> str | None:
        """The pinned file's name, also its name in the cache."""
        if self.url is None:
            return None
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str | None:
        """The first hex digits of the file's SHA-256: the name's part after its last '-'."""
        name = self.file_name
        if name is None:
            return None
        match = SHA256_PREFIX.search(PurePosixPath(name).stem)
        return match.group(1) if match else None


def _table(*entries: Any) -> dict[str, Any]:
    return {entry.name: entry for entry in entries}


BACKBONES: dict[str, Backbone] = _table(
    Backbone(
        "vits14", "vit", "vit_small_patch14_dinov2", 14, 14, published_tag="lvd142m", paper=True
    ),
    Backbone(
        "vit_tiny_demo",
        "vit",
        "vit_small_patch14_dinov2",
        14,
        14,
        # LayerScale off (0, not None: timm drops None and keeps DINOv2's 1e-5, under which a
        # small ViT from random weights sat on the position prior on a CPU budget).
        {"embed_dim": 192, "depth": 4, "num_heads": 3, "init_values": 0},
    ),
    Backbone("resnet50", "resnet", "resnet50", 8, 32, published_tag="tv_in1k", paper=True),
    Backbone("resnet_demo", "resnet", "resnet18", 8, 32),
)
EVERY_BACKBONE = tuple(BACKBONES)
PAPER_BACKBONES = tuple(name for name, entry in BACKBONES.items() if entry.paper)

_TORCHGEO = "https://hf.co/torchgeo"
INITS: dict[str, Init] = _table(
    Init("random", "random", EVERY_BACKBONE, "imagenet", "random weights (timm's initialisation)"),
    Init(
        "sop",
        "sop",
        EVERY_BACKBONE,
        "imagenet",  # the pretext normalises with ImageNet statistics (train/pretrain.py)
        "this project's subimage overlap pretraining (the pretrain stage's kept encoder)",
    ),
    Init(
        "imagenet",
        "timm",
        ("resnet50",),
        "imagenet",
        "ImageNet-1k supervised, torchvision's original weights",
        timm_name="resnet50.tv_in1k",
    ),
    Init(
        "lvd142m",
        "timm",
        ("vits14",),
        "imagenet",
        "DINOv2 on LVD-142M",
        timm_name="vit_small_patch14_dinov2.lvd142m",
    ),
    Init(
        "gassl",
        "url",
        ("resnet50",),
        "imagenet",
        "GASSL (geography-aware MoCo) on fMoW RGB, torchgeo's copy",
        url=f"{_TORCHGEO}/resnet50_fmow_rgb_gassl/resolve/"
        "fe8a91026cf9104f1e884316b8e8772d7af9052c/resnet50_fmow_rgb_gassl-da43d987.pth",
    ),
    Init(
        "seco",
        "url",
        ("resnet50",),
        "seco",
        "SeCo (seasonal contrast) on Sentinel-2 RGB, torchgeo's copy",
        url=f"{_TORCHGEO}/resnet50_sentinel2_rgb_seco/resolve/"
        "fbd07b02a8edb8fc1035f7957160deed4321c145/resnet50_sentinel2_rgb_seco-018bf397.pth",
    ),
    Init(
        "ssl4eo",
        "url",
        ("resnet50",),
        "ssl4eo",
        "SSL4EO-S12 MoCo on Sentinel-2 RGB, torchgeo's copy",
        url=f"{_TORCHGEO}/resnet50_sentinel2_rgb_moco/resolve/"
        "efd9723b59a88e9dc1420dc1e96afb25b0630a3c/resnet50_sentinel2_rgb_moco-2b57ba8b.pth",
    ),
    Init(
        "satlas",
        "url",
        ("resnet50",),
        "satlas",
        "SatlasPretrain, Sentinel-2 single-image RGB, torchgeo's copy",
        url=f"{_TORCHGEO}/satlas/resolve/"
        "081d6607431bf36bdb59c223777cbb267131b8f2/sentinel2_resnet50_si_rgb-45fc6972.pth",
    ),
)

# The paper's grid: its two backbones, each with the inits it compares.
PAPER_MODELS = (
    "vits14-random",
    "vits14-lvd142m",
    "vits14-sop",
    "resnet50-random",
    "resnet50-imagenet",
    "resnet50-gassl",
    "resnet50-seco",
    "resnet50-ssl4eo",
    "resnet50-satlas",
    "resnet50-sop",
)


def input_multiple(backbone: str, *, pretext: bool) -> int:
    entry = BACKBONES[backbone]
    return entry.pretext_multiple if pretext else entry.segmentation_multiple


def inits_for(backbone: str) -> list[str]:
    return [name for name, entry in INITS.items() if backbone in entry.backbones]


def pretext_variant(subimage_size: int, color_jitter: float) -> str:
    """``56-0.4``: a pretext variant's name, as DVC's matrix renders its two values."""
    return f"{int(subimage_size)}-{float(color_jitter)}"


def split_model(model: str) -> tuple[str, str]:
    """``resnet50-sop-56-0.0`` -> (``resnet50``, ``sop-56-0.0``): backbone names hold no '-'."""
    backbone, sep, init = model.partition("-")
    if not sep or backbone not in BACKBONES:
        raise ValueError(f"{model!r}: want <backbone>-<init> with a backbone of {list(BACKBONES)}")
    return backbone, init


def base_init(init: str) -> str:
    """``sop-56-0.0`` -> ``sop``: an ablation's or a sweep's encoder is still the SOP init."""
    return "sop" if init.startswith("sop-") else init


def sop_variant(init: str, main_variant: str) -> str:
    """What an SOP init names after ``sop-``: ``main_variant`` for plain ``sop``."""
    return main_variant if init == "sop" else init.removeprefix("sop-")


def _is_variant(init: str) -> bool:
    parts = init.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        float(parts[2])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SopInit:
    """The pretrain run an SOP init starts from: at most one of these departs from the main
    run (the main pretext variant on ``pretrain.dataset``, every pretraining image)."""

    variant: str | None = None  # sop-56-0.4: a pretext ablation
    image_fraction: float | None = None  # sop-img0.25: a nested share of the pretraining images
    dataset: str | None = None  # sop-loveda: pretrained on another dataset

    @property
    def swept(self) -> bool:
        """Whether it is a sweep's point (pretrain.image_fractions or pretrain.datasets)."""
        return self.image_fraction is not None or self.dataset is not None


def parse_sop(init: str) -> SopInit:
    """The one parser of SOP init names; ValueError (naming the grammar) for anything else."""
    if init == "sop":
        return SopInit()
    rest = init.removeprefix("sop-")
    if rest == init or not rest:
        raise ValueError(f"{init!r}: not an SOP init; want {SOP_GRAMMAR}")
    if _is_variant(init):
        return SopInit(variant=rest)
    images = IMAGES_TOKEN.fullmatch(rest)
    if images is not None:
        fraction = float(images.group(1))
        if not 0.0 < fraction < 1.0 or rest != f"img{fraction}":
            raise ValueError(
                f"{init!r}: want sop-img<fraction> with 0 < fraction < 1 written as Python "
                f"prints it (sop-img{fraction}); every image is the plain sop"
            )
        return SopInit(image_fraction=fraction)
    if re.fullmatch(DATASET_NAME_PATTERN, rest):
        return SopInit(dataset=rest)
    raise ValueError(f"{init!r}: unknown SOP init; want {SOP_GRAMMAR}")


def sweep_init(*, image_fraction: float | None = None, dataset: str | None = None) -> str:
    """A sweep point's init: ``sop-img0.25`` or ``sop-loveda`` (the inverse of parse_sop)."""
    if image_fraction is not None and dataset is None:
        return f"sop-img{float(image_fraction)}"
    if dataset is not None and image_fraction is None:
        return f"sop-{dataset}"
    raise ValueError("a sweep point is an image fraction or a dataset, one of the two")


def sop_run(backbone: str, init: str, main_variant: str) -> str:
    """The pretrain run (its outputs' name) an SOP init starts from: ``resnet50-112-0.0`` for
    plain sop, ``resnet50-56-0.4``, ``resnet50-img0.25``, ``resnet50-loveda``."""
    return f"{backbone}-{sop_variant(init, main_variant)}"


def sop_stage(backbone: str, init: str, main_variant: str) -> str:
    """The DVC stage that writes that run."""
    parsed = parse_sop(init)
    if parsed.image_fraction is not None:
        return f"pretrain_images@{backbone}-{parsed.image_fraction}"
    if parsed.dataset is not None:
        return f"pretrain_transfer@{backbone}-{parsed.dataset}"
    return f"pretrain@{sop_run(backbone, init, main_variant)}"


def check_model(model: str) -> None:
    """ValueError, naming what exists, unless ``model`` is a known backbone with a known init."""
    backbone, init = split_model(model)
    base = base_init(init)
    if base not in INITS:
        raise ValueError(f"{model!r}: unknown init {init!r}; known: {list(INITS)} or {SOP_GRAMMAR}")
    if base == "sop":
        try:
            parse_sop(init)
        except ValueError as exc:
            raise ValueError(f"{model!r}: {exc}") from None
    if backbone not in INITS[base].backbones:
        raise ValueError(
            f"{model!r}: no {init} weights for {backbone}; inits for it: {inits_for(backbone)}"
        )


def metric_name(class_name: str) -> str:
    """A class name as a metric-name part (``test_iou_<part>``): lower case, runs of other
    characters as '_'."""
    return re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_") or "class"
