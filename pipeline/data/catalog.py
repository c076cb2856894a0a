"""The dataset catalog: one entry per dataset with its sources, classes and layout.

An entry knows where its official archives live (URL, file name, md5), its class table, and how
to turn an extracted archive into :class:`SceneRecord` s. Tiling is then one generic function.
Users' own imagery gets an entry built from ``data.custom.<name>`` and its classes file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.config_data import BUILTIN_DATASETS, ClassesFile, CustomDatasetParams, DataParams
from pipeline.data.tiling import MaskDecoder, SceneRecord
from pipeline.errors import DataError

RGB = tuple[int, int, int]
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RemoteFile:
    """One official archive: where it is (None: no public URL), its name, its md5."""

    url: str | None
    filename: str
    md5: str


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    sources: tuple[RemoteFile, ...]
    class_names: tuple[str, ...]
    class_colors: tuple[RGB | None, ...]
    ignore_index: int | None
    # Classes that enter the mean IoU (DeepGlobe leaves "unknown" out).
    evaluated_classes: tuple[int, ...]
    # (extracted folder, data params) -> the scenes of every split.
    scene_records: Callable[[Path, DataParams], list[SceneRecord]]
    has_masks: bool = True
    remainder_fixed: bool = False  # True: official tile ids depend on dropping partial tiles
    how_to_get: str = ""
    # The data's licence: an SPDX identifier where it has one, else its terms in words; None
    # where nobody recorded one (a user's imagery). `sop export` puts it on a model card.
    licence: str | None = None


def split_by_hash(name: str, seed: int, fractions: Sequence[float]) -> str:
    """train/val/test for a scene from a seeded hash of its name alone.

    Fixed for a name and seed whatever other scenes exist, so the split is the same on every
    machine and for any subset of the data, with no list to download.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    train, val, _ = fractions
    return "train" if u < train else "val" if u < train + val else "test"


def _find_root(folder: Path, marker: Callable[[Path], bool], what: str) -> Path:
    """The folder itself or the one subfolder below it that holds the layout."""
    if marker(folder):
        return folder
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if marker(child):
            return child
    raise DataError(f"{folder}: {what} not found here or one level below")


# ---------------------------------------------------------------------------------------------
# LandCover.ai v1


LANDCOVERAI_SPLIT_HINT = (
    "the LandCover.ai archive ships train.txt, val.txt and test.txt beside images/ and masks/"
)


def _read_split_file(path: Path, missing_hint: str = LANDCOVERAI_SPLIT_HINT) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: split file missing; {missing_hint}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file is empty; list one id per line")
    return ids


def landcoverai_records(folder: Path, data: DataParams | None = None) -> list[SceneRecord]:
    """Scenes of LandCover.ai v1 with each tile's split taken from the official split files.

    Scenes are sorted by name, as split.py does; tile ids are ``<scene>_<k>``.
    """
    root = _find_root(
        folder,
        lambda p: (p / "images").is_dir() and (p / "masks").is_dir(),
        "LandCover.ai layout (images/ and masks/)",
    )
    images_dir, masks_dir = root / "images", root / "masks"
    images = sorted(images_dir.glob("*.tif"))
    if not images:
        raise DataError(f"{images_dir}: no .tif orthophotos found")
    tile_splits: dict[str, dict[int, str]] = {}
    for split in ("train", "val", "test"):
        split_path = root / f"{split}.txt"
        for tile_id in _read_split_file(split_path):
            scene, _, number = tile_id.rpartition("_")
            if not scene or not number.isdigit():
                raise DataError(f"{split_path}: malformed tile id {tile_id!r} (want <scene>_<k>)")
            tile_splits.setdefault(scene, {})[int(number)] = split
    records = []
    for image in images:
        mask = masks_dir / image.name
        if not mask.exists():
            raise DataError(f"{mask}: mask missing for orthophoto {image.name}")
        records.append(
            SceneRecord(image.stem, image, mask, tile_splits=tile_splits.get(image.stem, {}))
        )
    return records


LANDCOVERAI = DatasetInfo(
    name="landcoverai",
    title="LandCover.ai v1",
    sources=(
        RemoteFile(
            url="https://landcover.ai.linuxpolska.com/download/landcover.ai.v1.zip",
            filename="landcover.ai.v1.zip",
            md5="3268c89070e8734b4e91d531c0617e03",
        ),
    ),
    class_names=("background", "building", "woodland", "water", "road"),
    class_colors=((0, 0, 0), (97, 74, 74), (38, 115, 0), (0, 197, 255), (207, 207, 207)),
    ignore_index=None,
    evaluated_classes=(0, 1, 2, 3, 4),
    scene_records=landcoverai_records,
    remainder_fixed=True,
    licence="CC-BY-NC-SA-4.0",  # as landcover.ai states it (torchgeo's dataset table agrees)
)

# ---------------------------------------------------------------------------------------------
# LoveDA

LOVEDA_SPLITS = {"Train": "train", "Val": "val", "Test": "predict"}  # Test masks are hidden


def loveda_records(folder: Path, data: DataParams | None = None) -> list[SceneRecord]:
    """One extracted LoveDA zip (Train, Val or Test): every image of its Urban and Rural folders.

    Test has no masks: its tiles are kept for prediction only (split ``predict``); LoveDA is
    evaluated on Val.
    """
    root = _find_root(
        folder,
        lambda p: any((p / s).is_dir() for s in LOVEDA_SPLITS),
        "LoveDA layout (Train/, Val/ or Test/)",
    )
    records = []
    for split_dir, split in LOVEDA_SPLITS.items():
        for domain in ("Urban", "Rural"):
            images_dir = root / split_dir / domain / "images_png"
            if not images_dir.is_dir():
                continue
            masks_dir = root / split_dir / domain / "masks_png"
            for image in sorted(images_dir.glob("*.png"), key=lambda p: (len(p.stem), p.stem)):
                mask: Path | None = masks_dir / image.name
                if split != "predict":
                    if mask is None or not mask.exists():
                        raise DataError(f"{masks_dir / image.name}: mask missing for {image}")
                else:
                    mask = None
                records.append(
                    SceneRecord(
                        f"{domain.lower()}_{image.stem}",
                        image,
                        mask,
                        split=split,
                        extra={"domain": domain.lower()},
                    )
                )
    if not records:
        raise DataError(f"{root}: no images_png folders under Train/, Val/ or Test/")
    return records


LOVEDA_ZENODO = "https://zenodo.org/records/5706578/files"
LOVEDA = DatasetInfo(
    name="loveda",
    title="LoveDA",
    sources=(
        RemoteFile(
            f"{LOVEDA_ZENODO}/Train.zip?download=1", "Train.zip", "de2b196043ed9b4af1690b3f9a7d558f"
        ),
        RemoteFile(
            f"{LOVEDA_ZENODO}/Val.zip?download=1", "Val.zip", "84cae2577468ff0b5386758bb386d31d"
        ),
        RemoteFile(
            f"{LOVEDA_ZENODO}/Test.zip?download=1", "Test.zip", "a489be0090465e01fb067795d24e6b47"
        ),
    ),
    class_names=(
        "no-data",
        "background",
        "building",
        "road",
        "water",
        "barren",
        "forest",
        "agriculture",
    ),
    class_colors=(
        None,
        (255, 255, 255),
        (255, 0, 0),
        (255, 255, 0),
        (0, 0, 255),
        (159, 129, 183),
        (0, 255, 0),
        (255, 195, 128),
    ),
    ignore_index=0,
    evaluated_classes=(1, 2, 3, 4, 5, 6, 7),
    scene_records=loveda_records,
    licence="CC-BY-NC-SA-4.0",  # the LoveDA repository's README
)

# ---------------------------------------------------------------------------------------------
# DeepGlobe Land Cover 2018

DEEPGLOBE_COLORS: tuple[RGB, ...] = (
    (0, 255, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 255),
    (0, 0, 0),
)
DEEPGLOBE_UNKNOWN = 6


def _deepglobe_decoder() -> MaskDecoder:
    """Per-channel threshold at 128 (the official note), then the 3-bit code's class.

    Seven of the eight codes are the seven classes; the eighth, red (255, 0, 0), is no class:
    its pixels become "unknown" (excluded from mIoU) and are counted in ``off_palette_px``.
    """
    lut = [DEEPGLOBE_UNKNOWN] * 8
    for class_id, (r, g, b) in enumerate(DEEPGLOBE_COLORS):
        lut[(r >= 128) * 4 + (g >= 128) * 2 + (b >= 128)] = class_id
    off = tuple(
        code
        for code in range(8)
        if code
        not in {(r >= 128) * 4 + (g >= 128) * 2 + (b >= 128) for r, g, b in DEEPGLOBE_COLORS}
    )
    return MaskDecoder(kind="rgb_threshold", lut=tuple(lut), off_palette_codes=off)


def deepglobe_records(folder: Path, data: DataParams | None = None) -> list[SceneRecord]:
    """The labelled DeepGlobe images, from either common layout, split by a seeded id hash.

    Kaggle geoap96 ``data.zip``: ``data/{training_data,test_data}/{images,masks}``; Kaggle
    balraj98: ``train/<id>_sat.jpg`` with ``<id>_mask.png`` (its valid/ and test/ have no masks
    and are not used). Both hold the 803 labelled images of the challenge's train set.
    """
    data = data or DataParams()
    pairs: list[tuple[Path, Path]] = []
    for images_dir in [*folder.glob("**/images"), *folder.glob("**/train")]:
        for image in sorted(images_dir.glob("*_sat.jpg")):
            stem = image.name.removesuffix("_sat.jpg")
            for mask in (
                images_dir.parent / "masks" / f"{stem}_mask.png",
                images_dir / f"{stem}_mask.png",
            ):
                if mask.exists():
                    pairs.append((image, mask))
                    break
            else:
                raise DataError(f"{image}: no {stem}_mask.png beside it or in ../masks/")
    if not pairs:
        raise DataError(
            f"{folder}: no DeepGlobe <id>_sat.jpg / <id>_mask.png pairs (layouts: "
            "data/training_data/images + masks, or train/)"
        )
    decoder = _deepglobe_decoder()
    return [
        SceneRecord(
            image.name.removesuffix("_sat.jpg"),
            image,
            mask,
            split=split_by_hash(
                image.name.removesuffix("_sat.jpg"), data.split_seed, data.split_fractions
            ),
            decoder=decoder,
        )
        for image, mask in sorted(pairs, key=lambda p: p[0].name)
    ]


DEEPGLOBE = DatasetInfo(
    name="deepglobe",
    title="DeepGlobe Land Cover 2018",
    sources=(RemoteFile(None, "data.zip", "f32684b0b2bf6f8d604cd359a399c061"),),
    class_names=("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown"),
    class_colors=DEEPGLOBE_COLORS,
    ignore_index=None,
    evaluated_classes=(0, 1, 2, 3, 4, 5),
    scene_records=deepglobe_records,
    licence=(
        "DeepGlobe 2018 challenge terms: the DeepGlobe rules, the DigitalGlobe internal-use "
        "licence and the annotation licence (research use only)"
    ),
    how_to_get=(
        "DeepGlobe has no public direct download. Sign in to Kaggle, download data.zip from "
        "kaggle.com/datasets/geoap96/deepglobe2018-landcover-segmentation-traindataset "
        "(md5 f32684b0b2bf6f8d604cd359a399c061), or the balraj98/deepglobe-land-cover-"
        "classification-dataset folder, and set data.sources.deepglobe.url to its path"
    ),
)

CATALOG: dict[str, DatasetInfo] = {d.name: d for d in (LANDCOVERAI, LOVEDA, DEEPGLOBE)}
assert tuple(CATALOG) == BUILTIN_DATASETS  # config validates names against this tuple


# ---------------------------------------------------------------------------------------------
# The user's own imagery


def read_classes_file(path: Path) -> ClassesFile:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: classes file not found") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from None
    try:
        return ClassesFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path}: {key}: {first['msg'].removeprefix('Value error, ')}") from None


def _scenes_in(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def custom_dataset(name: str, spec: CustomDatasetParams, root: Path) -> DatasetInfo:
    """An entry for ``data.custom.<name>``; relative paths are relative to the pipeline root."""
    param = f"data.custom.{name}"
    classes = read_classes_file(root / spec.classes) if spec.classes else None
    masks_dir = root / spec.masks if spec.masks else None
    decoder = MaskDecoder()
    if classes is not None and classes.colors is not None:
        decoder = MaskDecoder(colors=tuple((c[0], c[1], c[2]) for c in classes.colors))

    def records(folder: Path, data: DataParams) -> list[SceneRecord]:
        scenes = _scenes_in(folder)
        if not scenes:
            raise DataError(f"{folder}: no GeoTIFF/PNG/JPEG scenes ({param}.images)")
        split_files = {s: folder / f"{s}.txt" for s in ("train", "val", "test")}
        listed: dict[str, str] = {}
        # All three split files or none (then the seeded hash): one missing or empty is a mistake.
        if any(p.exists() for p in split_files.values()):
            hint = (
                f"give train.txt, val.txt and test.txt in {folder}, or none of them to split "
                "by data.split_fractions"
            )
            for split, path in split_files.items():
                listed.update({stem: split for stem in _read_split_file(path, hint)})
        out = []
        for stem, image in scenes.items():
            mask = None
            if masks_dir is not None:
                candidates = [
                    m for m in masks_dir.glob(f"{stem}.*") if m.suffix.lower() in IMAGE_SUFFIXES
                ]
                if not candidates:
                    raise DataError(f"{masks_dir}: no mask named {stem}.* for scene {image}")
                mask = candidates[0]
            split = (
                listed.get(stem, "unassigned")
                if listed
                else split_by_hash(stem, data.split_seed, data.split_fractions)
            )
            out.append(
                SceneRecord(
                    stem,
                    image,
                    mask,
                    split=split if mask is not None else "pretrain",
                    bands=(spec.bands[0], spec.bands[1], spec.bands[2]) if spec.bands else None,
                    scale=(spec.scale[0], spec.scale[1]) if spec.scale else None,
                    decoder=decoder,
                    params_section=param,
                )
            )
        return out

    if classes is None:
        names: tuple[str, ...] = ()
        colors: tuple[RGB | None, ...] = ()
    else:
        names = tuple(classes.names)
        colors = tuple((c[0], c[1], c[2]) for c in classes.colors) if classes.colors else ()
    ignore = classes.ignore_index if classes else None
    return DatasetInfo(
        name=name,
        title=f"{name} (user imagery)",
        sources=(),
        class_names=names,
        class_colors=colors,
        ignore_index=ignore,
        evaluated_classes=tuple(c for c in range(len(names)) if c != ignore),
        scene_records=records,
        has_masks=masks_dir is not None,
    )


def get_dataset(name: str, data: DataParams, root: Path) -> DatasetInfo:
    if name in CATALOG:
        return CATALOG[name]
    if name in data.custom:
        return custom_dataset(name, data.custom[name], root)
    raise DataError(
        f"unknown dataset {name!r}; built-in: {list(CATALOG)}, or declare it under data.custom"
    )
