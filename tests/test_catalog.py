from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import BUILTIN_DATASETS, DataParams
from pipeline.data.catalog import (
    CATALOG,
    DEEPGLOBE_COLORS,
    _deepglobe_decoder,
    custom_dataset,
    get_dataset,
    loveda_records,
    read_classes_file,
    split_by_hash,
)
from pipeline.data.tiling import MaskDecoder, decode_mask, tile_grid
from pipeline.errors import DataError


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_every_builtin_entry_is_complete(name: str) -> None:
    info = CATALOG[name]
    assert info.sources
    assert len(info.class_colors) == len(info.class_names)
    assert set(info.evaluated_classes) <= set(range(len(info.class_names)))
    assert info.ignore_index not in info.evaluated_classes
    for remote in info.sources:
        assert len(remote.md5) == 32
        assert remote.url is not None or info.how_to_get


def test_hash_split_is_fixed_per_name_and_follows_the_fractions() -> None:
    names = [str(i) for i in range(20000)]
    splits = [split_by_hash(n, 0, (0.7, 0.15, 0.15)) for n in names]
    shares = {s: splits.count(s) / len(names) for s in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15}, abs=0.015)
    assert [split_by_hash(n, 0, (0.7, 0.15, 0.15)) for n in names[:50]] == splits[:50]
    assert splits != [split_by_hash(n, 1, (0.7, 0.15, 0.15)) for n in names]


def test_deepglobe_threshold_decoding() -> None:
    rgb = np.array([[c for c in DEEPGLOBE_COLORS] + [(250, 3, 252), (255, 0, 0)]], np.uint8)
    classes, off = decode_mask(rgb.transpose(2, 0, 1), _deepglobe_decoder(), Path("m.png"))
    # seven palette colours in order, a noisy rangeland, and red (no class): unknown
    assert classes.tolist() == [[0, 1, 2, 3, 4, 5, 6, 2, 6]]
    assert off == 1


def test_index_masks_and_colour_masks() -> None:
    ids = np.array([[[0, 1], [2, 1]]], np.uint8)
    assert (
        decode_mask(np.repeat(ids, 3, axis=0), MaskDecoder(), Path("m"))[0].tolist()
        == ids[0].tolist()
    )
    rgb = np.array([[[0, 0, 0], [255, 0, 0]]], np.uint8).transpose(2, 0, 1)
    with pytest.raises(DataError, match="bands that differ"):
        decode_mask(rgb, MaskDecoder(), Path("m.png"))
    colours = MaskDecoder(colors=((0, 0, 0), (255, 0, 0)))
    assert decode_mask(rgb, colours, Path("m.png"))[0].tolist() == [[0, 1]]
    with pytest.raises(DataError, match=r"m\.png: mask colour \(0, 255, 0\) is none"):
        decode_mask(
            np.array([[[0, 255, 0], [1, 2, 3]]], np.uint8).transpose(2, 0, 1),
            colours,
            Path("m.png"),
        )


def test_overlap_grid_covers_every_pixel() -> None:
    grid = tile_grid(2448, 2448, 512, "overlap")
    starts = sorted({y for _, y, _ in grid})
    assert starts == [0, 512, 1024, 1536, 1936]
    assert [k for k, _, _ in grid] == list(range(25))
    assert tile_grid(1024, 1024, 512, "overlap") == tile_grid(1024, 1024, 512, "drop")
    assert tile_grid(500, 900, 512, "overlap") == []


def test_loveda_layout_is_found_one_level_down(tmp_path: Path) -> None:
    for split, masks in (("Train", True), ("Test", False)):
        for domain in ("Urban", "Rural"):
            base = tmp_path / "unzipped" / split / domain
            (base / "images_png").mkdir(parents=True)
            (base / "images_png" / f"{len(domain)}{split}.png").touch()
            if masks:
                (base / "masks_png").mkdir()
                (base / "masks_png" / f"{len(domain)}{split}.png").touch()
    records = loveda_records(tmp_path)
    assert sorted((r.scene, r.split, r.mask is None) for r in records) == [
        ("rural_5Test", "predict", True),
        ("rural_5Train", "train", False),
        ("urban_5Test", "predict", True),
        ("urban_5Train", "train", False),
    ]
    (tmp_path / "unzipped/Train/Urban/masks_png/5Train.png").unlink()
    with pytest.raises(DataError, match="mask missing"):
        loveda_records(tmp_path)


def test_classes_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text("names: [a, b]\ncolors: [[0, 0, 0]]\n")
    with pytest.raises(DataError, match=r"classes\.yaml: colors: .*1 colours for 2 classes"):
        read_classes_file(path)
    path.write_text("names: [a, b]\nignore_index: 255\n")
    assert read_classes_file(path).ignore_index == 255


def test_custom_entries_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "classes.yaml").write_text("names: [bg, crop]\nignore_index: 255\n")
    data = DataParams.model_validate(
        {
            "datasets": ["mine"],
            "custom": {"mine": {"images": "img", "masks": "msk", "classes": "classes.yaml"}},
        }
    )
    info = get_dataset("mine", data, tmp_path)
    assert info.class_names == ("bg", "crop")
    assert info.evaluated_classes == (0, 1)
    assert custom_dataset("x", data.custom["mine"], tmp_path).has_masks
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        get_dataset("nope", data, tmp_path)
