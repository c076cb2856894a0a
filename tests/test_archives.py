"""The official-layout archive builders: layouts, mask encodings, decoded truth, determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import rasterio
import yaml
from PIL import Image

from tests.archives import (
    CUSTOM_CLASSES_YAML,
    CUSTOM_CRS,
    CUSTOM_IGNORE_INDEX,
    DEEPGLOBE_CLASS_NAMES,
    DEEPGLOBE_COLORS,
    DEEPGLOBE_RED,
    LOVEDA_SPLITS,
    BuiltArchive,
    custom_labelled_folder,
    custom_unlabelled_folder,
    decode_deepglobe_mask,
    deepglobe_balraj_folder,
    deepglobe_kaggle_zip,
    loveda_zips,
    md5_of,
    zip_folder,
)

LOVEDA_SIZE = 64
DEEPGLOBE_SIZE = 96


def _files(zf: zipfile.ZipFile) -> list[str]:
    return sorted(name for name in zf.namelist() if not name.endswith("/"))


def _open(zf: zipfile.ZipFile, name: str) -> Image.Image:
    return Image.open(io.BytesIO(zf.read(name)))


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _threshold_decode(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """An independent decoder: exact colour match after thresholding; anything else is 6."""
    bits = rgb >= 128
    out = np.full(rgb.shape[:2], 6, dtype=np.uint8)
    for cls, colour in DEEPGLOBE_COLORS.items():
        out[np.all(bits == (np.array(colour) >= 128), axis=-1)] = cls
    return out


# --- zip_folder / md5_of ----------------------------------------------------------------------


def test_zip_folder_is_deterministic_and_rooted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "b" / "c.png").write_bytes(b"\x89PNG fake")
    md5_1 = zip_folder(src, tmp_path / "one.zip", root_in_zip="Root/Sub")
    os.utime(src / "a.txt", (1_000_000_000, 1_000_000_000))  # mtimes must not matter
    md5_2 = zip_folder(src, tmp_path / "two.zip", root_in_zip="Root/Sub")
    assert md5_1 == md5_2 == md5_of(tmp_path / "one.zip")
    assert md5_1 == hashlib.md5((tmp_path / "one.zip").read_bytes()).hexdigest()
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        assert zf.namelist() == [
            "Root/",
            "Root/Sub/",
            "Root/Sub/a.txt",
            "Root/Sub/b/",
            "Root/Sub/b/c.png",
        ]
        assert zf.getinfo("Root/Sub/b/c.png").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("Root/Sub/a.txt").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("Root/Sub/a.txt") == b"alpha\n"
    zip_folder(src, src / "self.zip", dir_entries=False)  # its own output is never a member
    with zipfile.ZipFile(src / "self.zip") as zf:
        assert zf.namelist() == ["a.txt", "b/c.png"]


# --- LoveDA -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loveda(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltArchive]:
    return loveda_zips(tmp_path_factory.mktemp("loveda"), size=LOVEDA_SIZE, per_domain=2, seed=5)


def test_loveda_layout(loveda: dict[str, BuiltArchive]) -> None:
    assert list(loveda) == list(LOVEDA_SPLITS)
    ids: list[int] = []
    for split, built in loveda.items():
        assert built.path.name == f"{split}.zip"
        assert built.md5 == md5_of(built.path)
        expected: list[str] = []
        for key in built.images:
            key_split, domain, image_id = key.split("/")
            assert key_split == split
            assert domain in {"Rural", "Urban"}
            ids.append(int(image_id))
            expected.append(f"{split}/{domain}/images_png/{image_id}.png")
            if split != "Test":
                expected.append(f"{split}/{domain}/masks_png/{image_id}.png")
        with zipfile.ZipFile(built.path) as zf:
            assert _files(zf) == sorted(expected)
            assert all(name.startswith(f"{split}/") for name in zf.namelist())
        assert len(built.images) == 4
        assert set(built.masks) == (set() if split == "Test" else set(built.images))
    # Consecutive, unique ids across the dataset: Train Rural first, Test Urban last.
    assert ids == list(range(12))
    assert next(iter(loveda["Train"].images)) == "Train/Rural/0"


def test_loveda_pngs_decode_to_truth(loveda: dict[str, BuiltArchive]) -> None:
    for split, built in loveda.items():
        with zipfile.ZipFile(built.path) as zf:
            for key, image in built.images.items():
                _, domain, image_id = key.split("/")
                with _open(zf, f"{split}/{domain}/images_png/{image_id}.png") as img:
                    assert img.mode == "RGB"
                    assert img.size == (LOVEDA_SIZE, LOVEDA_SIZE)
                    np.testing.assert_array_equal(np.asarray(img), image)
            for key, mask in built.masks.items():
                _, domain, image_id = key.split("/")
                with _open(zf, f"{split}/{domain}/masks_png/{image_id}.png") as img:
                    assert img.mode == "L"
                    np.testing.assert_array_equal(np.asarray(img), mask)
                assert mask.dtype == np.uint8
                assert mask.max() <= 7


def test_loveda_masks_have_nontrivial_histograms(loveda: dict[str, BuiltArchive]) -> None:
    train = np.stack(list(loveda["Train"].masks.values()))
    counts = np.bincount(train.ravel(), minlength=8)
    assert (counts[1:] > 0).all()  # every real class appears in Train
    assert counts[0] > 0  # and some no-data pixels
    for mask in loveda["Train"].masks.values():
        assert len(np.unique(mask)) >= 4


def test_loveda_deterministic(loveda: dict[str, BuiltArchive], tmp_path: Path) -> None:
    again = loveda_zips(tmp_path / "a", size=LOVEDA_SIZE, per_domain=2, seed=5)
    assert {s: b.md5 for s, b in again.items()} == {s: b.md5 for s, b in loveda.items()}
    other = loveda_zips(tmp_path / "b", size=LOVEDA_SIZE, per_domain=2, seed=6)
    assert other["Train"].md5 != loveda["Train"].md5


# --- DeepGlobe --------------------------------------------------------------------------------


def test_decode_deepglobe_mask_handcrafted() -> None:
    rgb = np.array(
        [[[0, 255, 255], [250, 251, 3], [200, 40, 129], [3, 250, 2]],
         [[0, 0, 255], [255, 255, 255], [1, 2, 3], [255, 0, 0]]],
        dtype=np.uint8,
    )  # fmt: skip
    expected = np.array([[0, 1, 2, 3], [4, 5, 6, 6]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_deepglobe_mask(rgb), expected)
    np.testing.assert_array_equal(_threshold_decode(rgb), expected)


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory) -> BuiltArchive:
    out = tmp_path_factory.mktemp("deepglobe")
    return deepglobe_kaggle_zip(out, n_train=2, n_test=2, size=DEEPGLOBE_SIZE, seed=1)


def test_deepglobe_kaggle_layout(kaggle: BuiltArchive) -> None:
    assert kaggle.path.name == "data.zip"
    assert kaggle.md5 == md5_of(kaggle.path)
    ids = list(kaggle.images)
    assert ids == list(kaggle.masks)
    assert len(set(ids)) == 4
    assert all(i.isdigit() and 3 <= len(i) <= 6 and not i.startswith("0") for i in ids)
    expected = []
    for n, image_id in enumerate(ids):
        split = "training_data" if n < 2 else "test_data"
        expected += [
            f"data/{split}/images/{image_id}_sat.jpg",
            f"data/{split}/masks/{image_id}_mask.png",
        ]
    with zipfile.ZipFile(kaggle.path) as zf:
        assert _files(zf) == sorted(expected)


def test_deepglobe_kaggle_decodes_to_truth(kaggle: BuiltArchive) -> None:
    off_code = 0
    red = 0
    with zipfile.ZipFile(kaggle.path) as zf:
        names = _files(zf)
        for image_id, truth in kaggle.masks.items():
            [sat] = [n for n in names if n.endswith(f"/{image_id}_sat.jpg")]
            [mask_name] = [n for n in names if n.endswith(f"/{image_id}_mask.png")]
            with _open(zf, sat) as img:
                assert img.format == "JPEG"
                assert img.size == (DEEPGLOBE_SIZE, DEEPGLOBE_SIZE)
                np.testing.assert_array_equal(
                    np.asarray(img.convert("RGB")), kaggle.images[image_id]
                )
            with _open(zf, mask_name) as img:
                assert img.mode == "RGB"
                rgb = np.asarray(img)
            np.testing.assert_array_equal(decode_deepglobe_mask(rgb), truth)
            np.testing.assert_array_equal(_threshold_decode(rgb), truth)
            exact = np.zeros(truth.shape, dtype=bool)
            for colour in DEEPGLOBE_COLORS.values():
                exact |= np.all(rgb == colour, axis=-1)
            off_code += int((~exact).sum())
            red += int(np.all(rgb == DEEPGLOBE_RED, axis=-1).sum())
            assert len(np.unique(truth)) >= 5
    assert off_code > red > 0  # noisy codes, plus a pure red patch somewhere


def test_deepglobe_kaggle_clean_and_deterministic(kaggle: BuiltArchive, tmp_path: Path) -> None:
    again = deepglobe_kaggle_zip(tmp_path / "a", n_train=2, n_test=2, size=DEEPGLOBE_SIZE, seed=1)
    assert again.md5 == kaggle.md5
    clean = deepglobe_kaggle_zip(
        tmp_path / "c", n_train=1, n_test=1, size=DEEPGLOBE_SIZE, seed=1, noisy_colors=False
    )
    with zipfile.ZipFile(clean.path) as zf:
        for name in _files(zf):
            if name.endswith("_mask.png"):
                with _open(zf, name) as img:
                    colours = {tuple(c) for c in np.asarray(img).reshape(-1, 3).tolist()}
                assert colours <= set(DEEPGLOBE_COLORS.values())


def test_deepglobe_balraj_folder(tmp_path: Path) -> None:
    built = deepglobe_balraj_folder(tmp_path / "dg", n_train=2, size=DEEPGLOBE_SIZE, seed=2)
    assert built.path == tmp_path / "dg"
    assert built.md5 == ""
    with (built.path / "metadata.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image_id", "split", "sat_image_path", "mask_path"]
    assert [r["split"] for r in rows] == ["train", "train", "valid", "test"]
    expected = ["class_dict.csv", "metadata.csv"]
    for r in rows:
        assert r["sat_image_path"] == f"{r['split']}/{r['image_id']}_sat.jpg"
        expected.append(r["sat_image_path"])
        if r["split"] == "train":
            assert r["mask_path"] == f"train/{r['image_id']}_mask.png"
            expected.append(r["mask_path"])
        else:
            assert r["mask_path"] == ""
    assert _tree(built.path) == sorted(expected)
    assert list(built.masks) == list(built.images) == [r["image_id"] for r in rows[:2]]

    with (built.path / "class_dict.csv").open(newline="") as fh:
        classes = list(csv.DictReader(fh))
    assert [c["name"] for c in classes] == list(DEEPGLOBE_CLASS_NAMES)
    assert [(int(c["r"]), int(c["g"]), int(c["b"])) for c in classes] == list(
        DEEPGLOBE_COLORS.values()
    )

    for image_id, truth in built.masks.items():
        with Image.open(built.path / "train" / f"{image_id}_sat.jpg") as img:
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")), built.images[image_id])
        with Image.open(built.path / "train" / f"{image_id}_mask.png") as img:
            assert img.mode == "RGB"
            np.testing.assert_array_equal(_threshold_decode(np.asarray(img)), truth)


# --- A user's own imagery ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tif", "png", "jpg"])
def test_custom_labelled_folder(tmp_path: Path, fmt: str) -> None:
    built = custom_labelled_folder(tmp_path / "own", n=2, height=70, width=90, seed=4, fmt=fmt)
    names = list(built.images)
    assert names == list(built.masks) == ["scene_00", "scene_01"]
    assert _tree(built.path) == sorted(
        ["classes.yaml"] + [f"images/{n}.{fmt}" for n in names] + [f"masks/{n}.png" for n in names]
    )
    assert (built.path / "classes.yaml").read_text() == CUSTOM_CLASSES_YAML
    assert yaml.safe_load(CUSTOM_CLASSES_YAML) == {
        "names": ["background", "crop", "water"],
        "colors": [[0, 0, 0], [255, 200, 0], [0, 0, 255]],
        "ignore_index": 255,
    }
    transforms = []
    for name in names:
        image_path = built.path / "images" / f"{name}.{fmt}"
        if fmt == "tif":
            with rasterio.open(image_path) as src:
                assert (src.count, src.dtypes[0]) == (3, "uint8")
                assert src.crs.to_string() == CUSTOM_CRS
                assert src.res == (1.0, 1.0)
                transforms.append(src.transform)
                decoded = np.moveaxis(src.read(), 0, 2)
        else:
            with Image.open(image_path) as img:
                assert img.format == ("PNG" if fmt == "png" else "JPEG")
                decoded = np.asarray(img.convert("RGB"))
        assert decoded.shape == (70, 90, 3)
        np.testing.assert_array_equal(decoded, built.images[name])
        with Image.open(built.path / "masks" / f"{name}.png") as img:
            assert img.mode == "L"
            mask = np.asarray(img)
        np.testing.assert_array_equal(mask, built.masks[name])
        assert set(np.unique(mask).tolist()) == {0, 1, 2, CUSTOM_IGNORE_INDEX}
        assert 0 < (mask == CUSTOM_IGNORE_INDEX).mean() < 0.01
    if fmt == "tif":
        assert transforms[0] != transforms[1]  # distinct footprints


def test_custom_labelled_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        custom_labelled_folder(tmp_path, fmt="bmp")


@pytest.mark.parametrize(
    ("bands", "dtype", "top"), [(3, "uint8", 255), (4, "uint16", 10000), (2, "float32", 1.0)]
)
def test_custom_unlabelled_folder(tmp_path: Path, bands: int, dtype: str, top: float) -> None:
    built = custom_unlabelled_folder(
        tmp_path / "scenes", n=2, height=80, width=100, seed=3, bands=bands, dtype=dtype
    )
    assert built.masks == {}
    assert _tree(built.path) == ["scene_00.tif", "scene_01.tif"]
    for name, array in built.images.items():
        assert array.shape == (80, 100, bands)
        assert array.dtype == np.dtype(dtype)
        assert 0 <= array.min() < array.max() <= top
        with rasterio.open(built.path / f"{name}.tif") as src:
            assert (src.count, src.dtypes[0]) == (bands, dtype)
            assert src.crs.to_string() == CUSTOM_CRS
            assert src.res == (1.0, 1.0)
            np.testing.assert_array_equal(np.moveaxis(src.read(), 0, 2), array)
    again = custom_unlabelled_folder(
        tmp_path / "again", n=2, height=80, width=100, seed=3, bands=bands, dtype=dtype
    )
    for name in built.images:
        assert md5_of(built.path / f"{name}.tif") == md5_of(again.path / f"{name}.tif")
