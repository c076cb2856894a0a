"""The ``data`` section of params.yaml's schema (:mod:`pipeline.config` holds the rest): each
dataset's source, download limits, tiling, splits and the user's own datasets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.zoo import (
    DATASET_NAME_PATTERN,
)

# The catalog's built-in datasets (pipeline/data/catalog.py holds their entries); users add
# their own under data.custom.
BUILTIN_DATASETS = ("landcoverai", "loveda", "deepglobe")

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    # strict: YAML already carries types, so "64" for an int is a mistake, not something to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SourceParams(Section):
    """Where one dataset's archive comes from: the catalog's URL unless replaced here."""

    url: str | None = Field(
        default=None,
        description="A mirror URL (http, https, file) or a local path to the archive or an "
        "extracted folder; null uses the catalog's official URL.",
    )
    md5: str | dict[str, str] | None = Field(
        default=None,
        description="Expected md5 of the archive (or {archive file name: md5} for a dataset of "
        "several archives); null uses the catalog's; 'skip' checks nothing.",
    )

    @field_validator("md5")
    @classmethod
    def _md5_is_hex(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if value is None or value == "skip":
            return value
        digests = value if isinstance(value, dict) else {"": value}
        for digest in digests.values():
            if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(f"must be 32 hex digits or 'skip', got {digest!r}")
        if isinstance(value, dict):
            return {name: digest.lower() for name, digest in value.items()}
        return value.lower()

    md5_file: str | None = Field(
        default=None,
        description="A file that records the archives' md5s, a line each as md5sum writes "
        "them ('<md5>  <file name>'), relative to the pipeline root: for archives whose "
        "digest their producer records (the demo's synth stage). Replaces md5.",
    )

    @model_validator(mode="after")
    def _one_source_of_md5(self) -> SourceParams:
        if self.md5 is not None and self.md5_file is not None:
            raise ValueError("set md5 or md5_file, not both")
        return self

    def md5_for(
        self, filename: str, catalog_md5: str, recorded: Mapping[str, str] | None = None
    ) -> str | None:
        """The md5 one archive must have; None: not checked. ``recorded``: the md5_file's
        digests by file name, which replace the catalog's."""
        if self.md5 == "skip":
            return None
        if recorded is not None:
            return recorded.get(filename)
        if isinstance(self.md5, dict):
            return self.md5.get(filename, catalog_md5)
        return self.md5 or catalog_md5


class DownloadParams(Section):
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    retries: Annotated[int, Field(ge=0)] = 4
    max_unpacked_gb: Annotated[float, Field(gt=0)] = Field(
        default=100.0, description="Refuse archives that would unpack to more than this."
    )
    keep_archive: bool = True


class TilingParams(Section):
    """How one dataset's scenes are cut."""

    tile_size: Annotated[int, Field(ge=32)] = 512
    remainder: Literal["drop", "overlap"] = Field(
        default="drop",
        description="Scene edges that do not fill a tile: 'drop' them (LandCover.ai's split.py "
        "does), or add a last row/column of tiles aligned to the edge, overlapping its "
        "neighbours, so every pixel is covered.",
    )


# decided: DeepGlobe's 2448-pixel images leave a 400-pixel strip at 512; cover it with edge-
# aligned tiles rather than lose 30% of the labels.
DEFAULT_TILING = {"deepglobe": TilingParams(remainder="overlap")}


class ClassesFile(Section):
    """The classes file of a user's labelled dataset (YAML)."""

    names: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=255)
    colors: (
        list[
            Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]
        ]
        | None
    ) = None
    ignore_index: Annotated[int, Field(ge=0, le=255)] | None = None

    @field_validator("colors")
    @classmethod
    def _one_colour_per_class(
        cls, value: list[list[int]] | None, info: ValidationInfo
    ) -> list[list[int]] | None:
        names = info.data.get("names")
        if value is not None and names is not None and len(value) != len(names):
            raise ValueError(f"{len(value)} colours for {len(names)} classes")
        return value


class CustomDatasetParams(Section):
    """A user's own imagery: scenes for pretraining, or scene/mask pairs with a classes file."""

    images: str = Field(description="Folder of scenes (GeoTIFF, PNG or JPEG, any size).")
    masks: str | None = Field(
        default=None,
        description="Folder of single-band masks named like the scenes (any image extension); "
        "null: unlabelled imagery, for pretraining only.",
    )
    classes: str | None = Field(default=None, description="Classes file (YAML); needs masks.")
    bands: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description="The three 1-based bands read as RGB (e.g. [4, 3, 2] for Sentinel-2, "
        "[1, 2, 3] for RGBA); null: scenes must have exactly 3 bands.",
    )
    scale: list[float] | None = Field(
        default=None,
        description="[low, high]: maps pixel values linearly to 0..255 (clipped); needed for "
        "non-uint8 imagery.",
    )

    @model_validator(mode="after")
    def _classes_with_masks(self) -> CustomDatasetParams:
        # After the fields: an omitted key is never seen by a field validator.
        if (self.classes is None) != (self.masks is None):
            raise ValueError("masks and classes go together: give both, or neither")
        return self

    @field_validator("scale")
    @classmethod
    def _low_below_high(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or value[0] >= value[1]):
            raise ValueError(f"want [low, high] with low < high, got {value}")
        return value


class DataParams(Section):
    datasets: list[Annotated[str, Field(pattern=DATASET_NAME_PATTERN)]] = Field(
        default_factory=lambda: list(BUILTIN_DATASETS), min_length=1
    )
    sources: dict[str, SourceParams] = Field(default_factory=dict)
    custom: dict[Annotated[str, Field(pattern=DATASET_NAME_PATTERN)], CustomDatasetParams] = Field(
        default_factory=dict
    )
    tiling: dict[str, TilingParams] = Field(
        default_factory=dict, description="Per dataset; missing ones take TilingParams()."
    )
    download: DownloadParams = Field(default_factory=DownloadParams)
    label_fractions: list[Fraction] = Field(
        default_factory=lambda: [1.0, 0.5, 0.25],
        min_length=1,
        description="Nested subsets of the train split (decided: 25% within 50% within 100%).",
    )
    subset_seed: Annotated[int, Field(ge=0)] = 0
    split_fractions: list[Fraction] = Field(
        default_factory=lambda: [0.7, 0.15, 0.15],
        description="decided: train/val/test shares for datasets without an official split "
        "(DeepGlobe, user imagery without split files), assigned per scene by a seeded hash.",
    )
    split_seed: Annotated[int, Field(ge=0)] = 0
    workers: PositiveInt = Field(default=2, description="Processes that tile scenes in parallel.")

    @field_validator("split_fractions")
    @classmethod
    def _three_summing_to_one(cls, value: list[float]) -> list[float]:
        return _check_split_fractions(value)

    @field_validator("label_fractions")
    @classmethod
    def _fractions_unique(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError(f"fractions must be distinct, got {value}")
        return value

    @field_validator("custom")
    @classmethod
    def _custom_names_free(
        cls, value: dict[str, CustomDatasetParams]
    ) -> dict[str, CustomDatasetParams]:
        taken = sorted(set(value) & set(BUILTIN_DATASETS))
        if taken:
            raise ValueError(f"{taken} are built-in dataset names; choose another name")
        return value

    @model_validator(mode="after")
    def _names_are_known(self) -> DataParams:
        known = set(BUILTIN_DATASETS) | set(self.custom)
        for field, names in (
            ("datasets", self.datasets),
            ("sources", list(self.sources)),
            ("tiling", list(self.tiling)),
        ):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise PydanticCustomError(
                    "unknown_dataset",
                    "{field}: unknown dataset(s) {unknown}; built-in: {builtin}, or declare "
                    "yours under data.custom",
                    {"field": field, "unknown": unknown, "builtin": list(BUILTIN_DATASETS)},
                )
        official = self.tiling.get("landcoverai")
        if official is not None and official.remainder != "drop":
            raise PydanticCustomError(
                "official_numbering",
                "tiling.landcoverai.remainder: must be 'drop': the official split files number "
                "only full tiles",
            )
        return self

    def source(self, dataset: str) -> SourceParams:
        return self.sources.get(dataset, SourceParams())

    def tiling_for(self, dataset: str) -> TilingParams:
        return self.tiling.get(dataset, DEFAULT_TILING.get(dataset, TilingParams()))


def _check_split_fractions(value: list[float]) -> list[float]:
    if len(value) != 3 or abs(sum(value) - 1.0) > 1e-6:
        raise ValueError(f"want three fractions (train, val, test) summing to 1, got {value}")
    return value


def _check_unique(values: Sequence[Any]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"listed twice in {list(values)}")
