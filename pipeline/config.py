"""The typed schema of params.yaml: defaults <- file <- ``key=value`` overrides.

Every stage gets its parameters only through :func:`load_params`. Loading rejects unknown keys,
wrong types and impossible values with one message that names the file and the dotted key.
Defaults marked "decided" in the README are this project's choices where the paper is silent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.config_data import (
    BUILTIN_DATASETS,
    DataParams,
    Fraction,
    PositiveInt,
    Section,
    _check_split_fractions,
    _check_unique,
)
from pipeline.errors import ParamsError
from pipeline.overrides import one_line, with_overrides
from pipeline.zoo import (
    BACKBONES,
    DATASET_NAME_PATTERN,
    EVERY_BACKBONE,
    INITS,
    PAPER_BACKBONES,
    PAPER_MODELS,
    base_init,
    check_model,
    input_multiple,
    parse_sop,
    pretext_variant,
    sop_variant,
    split_model,
)

DEFAULT_PARAMS_FILE = Path("params.yaml")

if TYPE_CHECKING:
    BackboneName = str
else:  # a Literal, so that a wrong name's error lists every backbone
    BackboneName = Literal[EVERY_BACKBONE]


class PretrainParams(Section):
    """The overlap pretext task (README, "Where the paper is silent")."""

    backbones: list[BackboneName] = Field(
        default_factory=lambda: list(PAPER_BACKBONES),
        min_length=1,
        description="One pretrain stage per backbone (the paper: ViT-S/14 and ResNet-50).",
    )
    dataset: str = Field(
        default="landcoverai",
        pattern=DATASET_NAME_PATTERN,
        description="The tile store pretrained on (the paper: LandCover.ai); one of data.datasets.",
    )
    images: Literal["train", "all"] = Field(
        default="train",
        description="decided: pretrain on the train split only; 'all' also uses val/test tiles "
        "as the paper's 10.7K images may.",
    )
    init: Literal["pretrained", "none"] = Field(
        default="pretrained",
        description="Starting weights: LVD-142M (ViT-S/14) or ImageNet (ResNet-50) through timm, "
        "or none (random).",
    )
    weights_file: dict[str, str] = Field(
        default_factory=dict,
        description="Backbone name -> a local copy of its starting weights (safetensors or "
        ".pth); the only way offline.",
    )
    source_size: PositiveInt = 224
    subimage_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [112, 56],
        min_length=1,
        description="Subimage side, one pretrain stage each: the first is the main setting (the "
        "init 'sop'), the others ablations (inits 'sop-<size>-<jitter>'); the paper: 112 beats 56.",
    )
    share_encoders: bool = Field(
        default=False, description="ResNet dual encoder: one encoder for source and subimage."
    )
    epochs: PositiveInt = 150
    backbone_epochs: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="Backbone name -> its own number of epochs (the others train for epochs): "
        "a ViT from random weights needs a longer schedule than a ResNet.",
    )
    batch_size: PositiveInt = 64
    lr_backbone: Annotated[float, Field(gt=0)] = 1e-4
    lr_head: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    warmup_epochs: Annotated[int, Field(ge=0)] = 5
    focal_gamma: Annotated[float, Field(ge=0)] = 2.0
    focal_alpha: Fraction | None = Field(
        default=None,
        description="decided: off; the detection default 0.25 down-weights the subimage's pixels.",
    )
    color_jitters: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.0, 0.4],
        min_length=1,
        description="Colour jitter strength j, one pretrain stage each (first: the main "
        "setting): brightness, contrast and saturation factors drawn from [1-j, 1+j] per view; "
        "0 is off (the paper finds colour augmentation hurts; decided: 0.4 as 'on').",
    )
    flips: bool = False
    image_fractions: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=list,
        description="Data-scale sweep: the main variant also on these shares (< 1) of the images, "
        "nested subsets by data.subset_seed; a pretrain_images stage each, inits sop-img<f>.",
    )
    datasets: list[Annotated[str, Field(pattern=DATASET_NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Transfer sweep: the main variant also on these datasets (not pretrain."
        "dataset); a pretrain_transfer stage each, inits sop-<dataset>.",
    )

    @property
    def subimage_size(self) -> int:
        """The main setting (a pretrain stage's own params hold only its variant's value)."""
        return self.subimage_sizes[0]

    @property
    def color_jitter(self) -> float:
        return self.color_jitters[0]

    @property
    def main_variant(self) -> str:
        """The pretext variant a plain ``sop`` init means: ``<subimage>-<jitter>``."""
        return pretext_variant(self.subimage_size, self.color_jitter)

    @field_validator("source_size")
    @classmethod
    def _source_multiple_for_every_backbone(cls, value: int, info: ValidationInfo) -> int:
        for backbone in info.data.get("backbones") or []:
            _check_multiple(value, backbone, pretext=True)
        return value

    @field_validator("subimage_sizes")
    @classmethod
    def _subimages_fit(cls, value: list[int], info: ValidationInfo) -> list[int]:
        source = info.data.get("source_size")
        for size in value:
            for backbone in info.data.get("backbones") or []:
                _check_multiple(size, backbone, pretext=True)
            if source is not None and size > source:
                raise ValueError(
                    f"the subimage ({size}) must not be larger than its source ({source})"
                )
        _check_unique(value)
        return value

    @field_validator("color_jitters", "image_fractions", "datasets")
    @classmethod
    def _axis_values_unique(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        _check_unique(value)
        if info.field_name == "image_fractions" and any(f >= 1.0 for f in value):
            raise ValueError(f"want shares below 1 (every image is the plain sop), got {value}")
        return value

    def variants(self) -> list[tuple[int, float]]:
        """Every (subimage size, colour jitter) pair: the pretrain matrix's pretext axes."""
        return [(s, float(j)) for s in self.subimage_sizes for j in self.color_jitters]

    @model_validator(mode="after")
    def _demo_backbones_start_random(self) -> PretrainParams:
        for backbone in self.backbones:
            if (
                BACKBONES[backbone].published_tag is None
                and self.init == "pretrained"
                and backbone not in self.weights_file
            ):
                raise PydanticCustomError(
                    "demo_init",
                    "{backbone} has no published weights: set pretrain.init: none (or "
                    "pretrain.weights_file.{backbone})",
                    {"backbone": backbone},
                )
        for name, mapping in (
            ("weights_file", self.weights_file),
            ("backbone_epochs", self.backbone_epochs),
        ):
            unknown = sorted(set(mapping) - set(self.backbones))
            if unknown:
                raise PydanticCustomError(
                    "not_a_backbone",
                    "{name}: {unknown} not in pretrain.backbones",
                    {"name": name, "unknown": unknown},
                )
        return self

    def epochs_of(self, backbone: str) -> int:
        return self.backbone_epochs.get(backbone, self.epochs)


class ComputeParams(Section):
    """Where and how training runs; results do not depend on these (except through precision)."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when available (bf16 autocast), else CPU (fp32)."
    )
    devices: int | Literal["auto"] = Field(
        default="auto",
        description="DDP processes (torchrun); auto: every visible GPU, or 1 on CPU.",
    )
    compile: bool = Field(default=False, description="torch.compile the training model.")
    checkpoint_every: PositiveInt = Field(
        default=200, description="Steps between checkpoints (resume after a kill)."
    )
    loader_workers: Annotated[int, Field(ge=0)] = 4
    progress: bool = True
    keep_checkpoints: bool = Field(
        default=False,
        description="Keep a finished stage's training checkpoints (.sop/checkpoints/): a rerun "
        "after DVC removed its outputs then finishes at once. Off: deleted once the outputs are "
        "written, as the grid's would take tens of GB and best.pt repeats best.safetensors.",
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _processes_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and value > 0):
            return value
        raise ValueError(f"want a positive number of processes or 'auto' (got {value!r})")


class FinetuneParams(Section):
    """Downstream segmentation: the grid datasets x models x label fractions x seeds."""

    datasets: list[Annotated[str, Field(pattern=DATASET_NAME_PATTERN)]] = Field(
        default_factory=lambda: list(BUILTIN_DATASETS),
        min_length=1,
        description="Labelled tile stores fine-tuned and evaluated on; each one of data.datasets.",
    )
    models: list[str] = Field(
        default_factory=lambda: list(PAPER_MODELS),
        min_length=1,
        description="'<backbone>-<init>': a backbone and its starting weights. Inits: random, "
        "imagenet, lvd142m, gassl, seco, ssl4eo, satlas, sop (the main pretext variant) or "
        "sop-<subimage>-<jitter> (an ablation's encoder, e.g. sop-56-0.0).",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="One run per seed: decoder weights and augmentation; decided: one seed.",
    )
    weights_file: dict[str, str] = Field(
        default_factory=dict,
        description="Init -> a local copy of its published weights (safetensors or .pth); the "
        "only way offline. Pinned-URL inits check it against their pinned sha256 prefix.",
    )
    normalisation: dict[str, Literal["own", "imagenet"]] = Field(
        default_factory=dict,
        description="decided: 'imagenet' (x/255, ImageNet mean/std) for every init unless set "
        "to 'own', the normalisation the init was pretrained with (Sentinel-2 reflectance "
        "scalings do not fit 8-bit aerial RGB).",
    )
    backbone_input_size: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="A backbone's own crop side where input_size does not suit it (a ViT's "
        "multiple of 14 beside a ResNet's 32), e.g. {vit_tiny_demo: 126}.",
    )
    input_size: PositiveInt = Field(
        default=448,
        description="Crop side; a multiple of the ViT patch size (14) and of 32 for a ResNet.",
    )
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 16
    lr_backbone: Annotated[float, Field(gt=0)] = 1e-4
    lr_head: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_epochs: Annotated[int, Field(ge=0)] = 2
    flips: bool = Field(default=True, description="Random horizontal and vertical flips.")
    rot90: bool = Field(default=True, description="Random multiples of 90 degrees.")
    window_overlap: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0,
        description="Sliding-window inference on whole tiles: overlap between windows (the "
        "last window is aligned to the tile's edge whatever the overlap).",
    )
    convergence_threshold: Fraction = Field(
        default=0.60,
        description="The paper's convergence measure: the first epoch whose validation mIoU "
        "reaches this.",
    )
    sop_gate: bool = Field(
        default=True,
        description="weights@<backbone>-sop* refuses an SOP encoder whose pretext val_iou does "
        "not beat its centred-box baseline_iou by sop_gate_margin (metrics/pretrain/).",
    )
    sop_gate_margin: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.05,
        description="decided: how far the pretext val_iou must exceed the baseline_iou (the "
        "paper's own sanity target is IoU > 0.95 on LandCover.ai).",
    )

    @field_validator("models")
    @classmethod
    def _models_exist(cls, value: list[str]) -> list[str]:
        for model in value:
            check_model(model)
        _check_unique(value)
        return value

    @field_validator("backbone_input_size")
    @classmethod
    def _multiple_for_its_backbone(cls, value: dict[str, int]) -> dict[str, int]:
        for backbone, size in value.items():
            if backbone not in BACKBONES:
                raise PydanticCustomError(
                    "unknown_backbone",
                    "unknown backbone {backbone}; known: {known}",
                    {"backbone": backbone, "known": list(BACKBONES)},
                )
            _check_multiple(size, backbone, pretext=False)
        return value

    @field_validator("input_size")
    @classmethod
    def _multiple_for_every_backbone(cls, value: int, info: ValidationInfo) -> int:
        own = info.data.get("backbone_input_size") or {}
        for model in info.data.get("models") or []:
            if split_model(model)[0] not in own:
                _check_multiple(value, split_model(model)[0], pretext=False)
        return value

    def input_size_of(self, backbone: str) -> int:
        return self.backbone_input_size.get(backbone, self.input_size)

    def for_backbone(self, backbone: str) -> FinetuneParams:
        """These params with ``input_size`` as ``backbone`` trains and evaluates at."""
        return self.model_copy(update={"input_size": self.input_size_of(backbone)})

    @field_validator("datasets", "seeds")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        _check_unique(value)
        return value

    def backbones(self) -> list[str]:
        return list(dict.fromkeys(split_model(m)[0] for m in self.models))

    def normalisation_of(self, init: str) -> str:
        """``own`` or ``imagenet`` (the decided default) for ``init``."""
        return self.normalisation.get(base_init(init), "imagenet")

    @model_validator(mode="after")
    def _known_inits_and_sizes(self) -> FinetuneParams:
        for field, names in (
            ("weights_file", self.weights_file),
            ("normalisation", self.normalisation),
        ):
            unknown = sorted(set(names) - set(INITS))
            if unknown:
                raise PydanticCustomError(
                    "unknown_init",
                    "{field}: unknown init(s) {unknown}; known: {known}",
                    {"field": field, "unknown": unknown, "known": list(INITS)},
                )
        return self


class SyntheticParams(Section):
    """The demo's stand-in for the LandCover.ai archive (pipeline/synthetic/)."""

    scenes: PositiveInt = 6
    height: Annotated[int, Field(ge=512)] = 1600
    width: Annotated[int, Field(ge=512)] = 1700
    split_fractions: list[Fraction] = Field(default_factory=lambda: [0.7, 0.15, 0.15])
    seed: Annotated[int, Field(ge=0)] = 0

    @field_validator("split_fractions")
    @classmethod
    def _three_summing_to_one(cls, value: list[float]) -> list[float]:
        return _check_split_fractions(value)


class TrackingParams(Section):
    experiment_prefix: str = Field(default="sop", min_length=1)


class ReportParams(Section):
    """How sure the report's figures are: intervals and the data they describe."""

    resamples: PositiveInt = Field(
        default=1000, description="decided: bootstrap resamples of the test tiles per interval."
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="The intervals' coverage.")
    seed: Annotated[int, Field(ge=0)] = Field(
        default=0, description="The bootstrap's seed (the same resamples for every cell)."
    )
    data: str = Field(
        default="",
        description="One line saying what the data are, for the report's header; empty: the "
        "datasets' names, as real data.",
    )


class Params(Section):
    """The whole of params.yaml."""

    seed: Annotated[int, Field(ge=0)] = 0
    data: DataParams = Field(default_factory=DataParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    compute: ComputeParams = Field(default_factory=ComputeParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    report: ReportParams = Field(default_factory=ReportParams)
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)

    @model_validator(mode="after")
    def _sop_models_are_pretrained(self) -> Params:
        p = self.pretrain
        if p.dataset in p.datasets or not set(p.datasets) <= set(self.data.datasets):
            raise ValueError(
                f"pretrain.datasets: want datasets of data.datasets {self.data.datasets} other "
                f"than pretrain.dataset {p.dataset} (the plain sop), got {p.datasets}"
            )
        for model in self.finetune.models:
            backbone, init = split_model(model)
            if base_init(init) != "sop":
                continue
            if backbone not in self.pretrain.backbones:
                raise PydanticCustomError(
                    "sop_backbone",
                    "finetune.models: {model} needs {backbone} in pretrain.backbones {backbones}",
                    {"model": model, "backbone": backbone, "backbones": self.pretrain.backbones},
                )
            _check_sop_run(model, init, self.pretrain)
        return self

    def for_pretext(self, subimage_size: int, color_jitter: float) -> Params:
        """These params with one pretext variant as the main one: what its pretrain stage reads."""
        # The variant first, the others kept: a job's params still validate (finetune.models).
        p = self.pretrain
        sizes = [subimage_size, *(s for s in p.subimage_sizes if s != subimage_size)]
        jitters = [float(color_jitter), *(j for j in p.color_jitters if j != color_jitter)]
        pretrain = p.model_copy(update={"subimage_sizes": sizes, "color_jitters": jitters})
        return self.model_copy(update={"pretrain": pretrain})


def _check_sop_run(model: str, init: str, pretrain: PretrainParams) -> None:
    """The pretrain run an SOP model names must be one the params define."""
    parsed = parse_sop(init)
    for value, field in ((parsed.image_fraction, "image_fractions"), (parsed.dataset, "datasets")):
        listed = getattr(pretrain, field)
        if value is not None and value not in listed:
            raise ValueError(f"finetune.models: {model} needs {value} in pretrain.{field} {listed}")
    variants = [pretext_variant(*v) for v in pretrain.variants()]
    if not parsed.swept and sop_variant(init, pretrain.main_variant) not in variants:
        raise ValueError(
            f"finetune.models: {model} names no pretext variant of pretrain.subimage_sizes x "
            f"color_jitters: {variants}"
        )


def _check_multiple(value: int, backbone: str, *, pretext: bool) -> None:
    multiple = input_multiple(backbone, pretext=pretext)
    if value % multiple:
        lower = value // multiple * multiple
        higher = lower + multiple
        raise ValueError(
            f"{value} is not a multiple of {multiple} ({backbone}); try {lower} or {higher}"
        )


def params_from_mapping(
    tree: Mapping[str, Any], *, source: str = "params", overrides: Sequence[str] = ()
) -> Params:
    """Validate a parsed params tree with overrides applied on top."""
    merged = with_overrides(tree, overrides)
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        where = source if not overrides else f"{source} (with overrides {list(overrides)})"
        raise ParamsError(one_line(exc, where)) from None


def load_params(path: Path = DEFAULT_PARAMS_FILE, overrides: Sequence[str] = ()) -> Params:
    """Read and validate params.yaml; raise :class:`ParamsError` naming the file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f" ({problem})" if problem else ""
        raise ParamsError(f"{path}:{where} not valid YAML{detail}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return params_from_mapping(tree, source=str(path), overrides=overrides)


def params_to_yaml(params: Params) -> str:
    """The resolved config, as saved beside every run."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
