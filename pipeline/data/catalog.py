"""The dataset catalog: one entry per dataset with its sources, classes and layout.

An entry knows where its official archive lives (URL, file name, md5), its class table, and how
to turn the extracted archive into :class:`SceneRecord` s. Tiling is then one generic function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.tiling import SceneRecord
from pipeline.errors import DataError

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class RemoteFile:
    """One official archive: where it is, what it is called, what its md5 must be."""

    url: str
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
    scene_records: Callable[[Path], list[SceneRecord]]
    how_to_get: str = ""


def _read_split_file(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(
            f"{path}: split file missing; the LandCover.ai archive ships train.txt, "
            "val.txt and test.txt beside images/ and masks/"
        )
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file is empty")
    return ids


def landcoverai_records(root: Path) -> list[SceneRecord]:
    """Scenes of LandCover.ai v1 with each tile's split taken from the official split files.

    Scenes are sorted by name, as split.py does; tile ids are ``<scene>_<k>``.
    """
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: expected images/ and masks/ folders (LandCover.ai v1 layout)")
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
    class_colors=(None, (97, 74, 74), (38, 115, 0), (0, 197, 255), (207, 207, 207)),
    ignore_index=None,
    evaluated_classes=(0, 1, 2, 3, 4),
    scene_records=landcoverai_records,
)

CATALOG: dict[str, DatasetInfo] = {entry.name: entry for entry in (LANDCOVERAI,)}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return CATALOG[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(CATALOG)}") from None
