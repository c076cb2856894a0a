"""Tiny synthetic archives in the official layouts of remote-sensing datasets, for tests.

Tests never touch real data: each builder here writes a few small, seeded, synthetic images in
the exact file layout a dataset is distributed in (zip member names, folder names, file formats,
mask encodings), so that download, extraction and tiling code can run end to end on them.

Every builder returns a `BuiltArchive` holding the truth: the images as a reader will decode them
(JPEGs are decoded back with PIL, since JPEG is lossy) and the class-index masks that a correct
mask decoder must produce. Builders are pure functions of their arguments: the same arguments
give byte-identical files, and zips carry fixed timestamps and attributes, so their md5 is stable.

Layouts:

* LoveDA (Zenodo record 5706578): `Train.zip`, `Val.zip`, `Test.zip`, each holding
  `<Split>/<Domain>/images_png/<id>.png` and (not for Test) `<Split>/<Domain>/masks_png/<id>.png`;
  masks are 'L' PNGs with values 0..7, 0 being no-data.
* DeepGlobe Land Cover, Kaggle geoap96 layout: `data.zip` holding
  `data/{training,test}_data/images/<id>_sat.jpg` and
  `data/{training,test}_data/masks/<id>_mask.png`; masks are RGB PNGs in the seven DeepGlobe
  colour codes, slightly noisy.
* DeepGlobe Land Cover, Kaggle balraj98 layout: a folder with `train/<id>_sat.jpg` +
  `train/<id>_mask.png`, `valid/<id>_sat.jpg`, `test/<id>_sat.jpg`, `class_dict.csv`,
  `metadata.csv`.
* A user's own labelled imagery: `images/<name>.{tif,png,jpg}`, `masks/<name>.png`, `classes.yaml`.
* A user's own unlabelled scenes: `<name>.tif`, any band count and dtype.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from PIL import Image
from rasterio.transform import Affine

U8Array = npt.NDArray[np.uint8]

__all__ = [
    "CUSTOM_CLASSES_YAML",
    "CUSTOM_CLASS_NAMES",
    "CUSTOM_COLORS",
    "CUSTOM_CRS",
    "CUSTOM_IGNORE_INDEX",
    "DEEPGLOBE_CLASS_NAMES",
    "DEEPGLOBE_COLORS",
    "DEEPGLOBE_RED",
    "LOVEDA_CLASS_NAMES",
    "LOVEDA_DOMAINS",
    "LOVEDA_SPLITS",
    "ZIP_DATE_TIME",
    "BuiltArchive",
    "custom_labelled_folder",
    "custom_unlabelled_folder",
    "decode_deepglobe_mask",
    "deepglobe_balraj_folder",
    "deepglobe_kaggle_zip",
    "loveda_zips",
    "md5_of",
    "zip_folder",
]


@dataclass(frozen=True)
class BuiltArchive:
    """What a builder wrote, and the truth a correct reader must recover from it."""

    path: Path  # the zip (or the folder, for folder builders)
    md5: str  # md5 of the zip file ("" for folders)
    images: dict[str, npt.NDArray[Any]]  # key -> (H, W, bands) array as a reader decodes it
    masks: dict[str, U8Array]  # key -> (H, W) uint8 class-index mask


# ---------------------------------------------------------------------------------------------
# Deterministic zips
# ---------------------------------------------------------------------------------------------

# The earliest timestamp a zip can hold: archive bytes must not depend on the clock.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# Already compressed: deflating them again only costs time.
_STORED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".zip"})


def md5_of(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_info(name: str, *, is_dir: bool, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.compress_type = compress
    info.create_system = 3  # unix, whatever the host: the attributes below are unix ones
    info.external_attr = ((0o40755 << 16) | 0x10) if is_dir else (0o100644 << 16)
    return info


def zip_folder(
    folder: Path, out_zip: Path, *, root_in_zip: str = "", dir_entries: bool = True
) -> str:
    """Zip every file under `folder` into `out_zip`, byte for byte reproducibly; return its md5.

    Member names are the files' paths relative to `folder` (POSIX separators, sorted), under
    `root_in_zip/` when given. With `dir_entries` (the default, as `zip -r` and most archivers
    do) each directory also gets its own `name/` entry, root included, so readers that list
    members must skip them. PNG/JPEG members are stored, others deflated; timestamps and
    permissions are fixed. The zip is written atomically; `out_zip` itself is never included.
    """
    folder = Path(folder)
    out_zip = Path(out_zip)
    root = root_in_zip.strip("/")
    prefix = f"{root}/" if root else ""
    out_resolved = out_zip.resolve()

    files: list[tuple[str, Path]] = []
    dirs: set[str] = set()
    if root:
        parts = root.split("/")
        dirs.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        if rel_dir != ".":
            dirs.add(f"{prefix}{rel_dir}/")
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if path.resolve() == out_resolved:
                continue
            files.append((f"{prefix}{path.relative_to(folder).as_posix()}", path))

    entries: list[tuple[str, Path | None]] = [(d, None) for d in dirs] if dir_entries else []
    entries.extend(files)
    entries.sort(key=lambda entry: entry[0])

    out_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_zip.name}.", suffix=".tmp", dir=out_zip.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
            for name, source in entries:
                if source is None:
                    zf.writestr(_zip_info(name, is_dir=True, compress=zipfile.ZIP_STORED), b"")
                    continue
                stored = source.suffix.lower() in _STORED_SUFFIXES
                compress = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                info = _zip_info(name, is_dir=False, compress=compress)
                info.file_size = source.stat().st_size
                with source.open("rb") as src, zf.open(info, "w") as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        dst.write(chunk)
        tmp.chmod(0o644)
        os.replace(tmp, out_zip)
    finally:
        tmp.unlink(missing_ok=True)
    return md5_of(out_zip)


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A scratch folder inside `out_dir` (same filesystem), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=".stage-", dir=out_dir) as name:
        yield Path(name)


# ---------------------------------------------------------------------------------------------
# Synthetic content
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """A blocky scene: `fill` everywhere, then rectangles `(value, y0, y1, x0, x1)` on top."""

    height: int
    width: int
    fill: int
    rects: tuple[tuple[int, int, int, int, int], ...]

    def paint(self, table: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Paint `table[value]` (a scalar or a per-band vector) into each region.

        Slice assignments of a prebuilt row, not a per-pixel lookup: fast even at 2448 x 2448.
        """
        out = np.empty((self.height, self.width, *table.shape[1:]), dtype=table.dtype)
        out[:] = np.broadcast_to(table[self.fill], out.shape[1:]).copy()
        for value, y0, y1, x0, x1 in self.rects:
            out[y0:y1, x0:x1] = np.broadcast_to(table[value], out[0, x0:x1].shape).copy()
        return out

    def mask(self) -> U8Array:
        painted: U8Array = self.paint(np.arange(256, dtype=np.uint8))
        return painted


def _blocky_layout(
    rng: np.random.Generator, height: int, width: int, fill: int, classes: Sequence[int]
) -> _Layout:
    """`fill` everywhere, plus one rectangle of each of `classes`, each in its own grid cell.

    The cells of a 3 x 3 grid never overlap, so every listed class is present; rectangle size
    (a quarter to all of a cell) and position are random, so class histograms vary.
    """
    grid = 3
    if len(classes) > grid * grid:
        raise ValueError(f"at most {grid * grid} rectangle classes, got {len(classes)}")
    if height < grid or width < grid:
        raise ValueError(f"images must be at least {grid} x {grid} pixels, got {height} x {width}")
    ys = np.linspace(0, height, grid + 1).astype(int)
    xs = np.linspace(0, width, grid + 1).astype(int)
    cells = rng.permutation(grid * grid)[: len(classes)]
    rects: list[tuple[int, int, int, int, int]] = []
    for cls, cell in zip(classes, cells, strict=True):
        row, col = divmod(int(cell), grid)
        y0, ch = int(ys[row]), int(ys[row + 1] - ys[row])
        x0, cw = int(xs[col]), int(xs[col + 1] - xs[col])
        rh = int(rng.integers(max(1, ch // 2), ch + 1))
        rw = int(rng.integers(max(1, cw // 2), cw + 1))
        oy = y0 + int(rng.integers(0, ch - rh + 1))
        ox = x0 + int(rng.integers(0, cw - rw + 1))
        rects.append((int(cls), oy, oy + rh, ox, ox + rw))
    return _Layout(height, width, fill, tuple(rects))


# Amplitude and grain of the texture added to rendered images.
_NOISE = 12
_GRAIN = 4


def _palette(colors: dict[int, tuple[int, int, int]]) -> U8Array:
    """A 256-entry RGB table (unlisted values: mid grey), shifted down by the noise amplitude.

    Colours must lie in [_NOISE, 255 - _NOISE], so adding 0..2 * _NOISE never wraps around.
    """
    table = np.full((256, 3), 128 - _NOISE, dtype=np.uint8)
    for value, rgb in colors.items():
        if not all(_NOISE <= c <= 255 - _NOISE for c in rgb):
            raise ValueError(f"image colour {rgb} must lie in [{_NOISE}, {255 - _NOISE}]")
        table[value] = [c - _NOISE for c in rgb]
    return table


def _render_rgb(rng: np.random.Generator, layout: _Layout, palette: U8Array) -> U8Array:
    """An RGB image whose colours follow `layout`, plus a coarse-grained uniform texture.

    The texture is drawn per `_GRAIN` x `_GRAIN` block: images stay non-constant inside every
    region while PNG still compresses them quickly.
    """
    h, w = layout.height, layout.width
    image: U8Array = layout.paint(palette)
    gh, gw = -(-h // _GRAIN), -(-w // _GRAIN)
    coarse = rng.integers(0, 2 * _NOISE + 1, size=(gh, 1, gw, 1, 3), dtype=np.uint8)
    if h % _GRAIN == 0 and w % _GRAIN == 0:
        image.reshape(gh, _GRAIN, gw, _GRAIN, 3)[...] += coarse  # in place, through a view
    else:
        fine = np.broadcast_to(coarse, (gh, _GRAIN, gw, _GRAIN, 3))
        image += fine.reshape(gh * _GRAIN, gw * _GRAIN, 3)[:h, :w]
    return image


def _png_bytes(array: U8Array) -> bytes:
    buf = io.BytesIO()
    # A fixed, low compression level: fast, and byte-identical output for identical input.
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpeg_bytes(array: U8Array, quality: int = 95) -> tuple[bytes, U8Array]:
    """JPEG-encode an RGB array; return the bytes and the array PIL decodes them back to."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        decoded = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return data, decoded


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _unique_ids(rng: np.random.Generator, n: int) -> list[int]:
    """`n` distinct ids of 3 to 6 digits (like DeepGlobe's 119, 6399, 100694), in draw order."""
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < n:
        digits = int(rng.integers(3, 7))
        value = int(rng.integers(10 ** (digits - 1), 10**digits))
        if value not in seen:
            seen.add(value)
            ids.append(value)
    return ids


# ---------------------------------------------------------------------------------------------
# LoveDA
# ---------------------------------------------------------------------------------------------

LOVEDA_SPLITS: tuple[str, str, str] = ("Train", "Val", "Test")
# The official ids run Rural before Urban within every split, and split after split.
LOVEDA_DOMAINS: tuple[str, str] = ("Rural", "Urban")
LOVEDA_CLASS_NAMES: tuple[str, ...] = (
    "no-data",
    "background",
    "building",
    "road",
    "water",
    "barren",
    "forest",
    "agriculture",
)
_LOVEDA_PALETTE = _palette(
    {
        0: (12, 12, 12),
        1: (120, 120, 110),
        2: (200, 90, 80),
        3: (170, 170, 170),
        4: (40, 70, 150),
        5: (180, 150, 110),
        6: (40, 110, 50),
        7: (150, 190, 80),
    }
)


def loveda_zips(
    out_dir: Path, *, size: int = 1024, per_domain: int = 1, seed: int = 0
) -> dict[str, BuiltArchive]:
    """Write LoveDA's `Train.zip`, `Val.zip` and `Test.zip` into `out_dir`.

    Each split gets `per_domain` images per domain; ids are consecutive integers across the whole
    dataset (Train Rural, Train Urban, Val Rural, Val Urban, Test Rural, Test Urban). Every
    labelled mask holds all eight values 0..7 (0 = no-data) in random rectangles. Keys are
    `f"{split}/{domain}/{id}"`; Test has images only, so its `masks` is empty.
    """
    if per_domain < 1:
        raise ValueError(f"per_domain must be >= 1, got {per_domain}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    next_id = 0
    built: dict[str, BuiltArchive] = {}
    for split in LOVEDA_SPLITS:
        images: dict[str, npt.NDArray[Any]] = {}
        masks: dict[str, U8Array] = {}
        labelled = split != "Test"
        with _staging(out_dir) as stage:
            root = stage / split
            for domain in LOVEDA_DOMAINS:
                for _ in range(per_domain):
                    image_id = str(next_id)
                    next_id += 1
                    fill = int(rng.integers(1, 8))
                    rects = [c for c in range(8) if c != fill]
                    layout = _blocky_layout(rng, size, size, fill, rects)
                    mask = layout.mask()
                    image = _render_rgb(rng, layout, _LOVEDA_PALETTE)
                    key = f"{split}/{domain}/{image_id}"
                    _write(root / domain / "images_png" / f"{image_id}.png", _png_bytes(image))
                    images[key] = image
                    if labelled:
                        _write(root / domain / "masks_png" / f"{image_id}.png", _png_bytes(mask))
                        masks[key] = mask
            out_zip = out_dir / f"{split}.zip"
            md5 = zip_folder(root, out_zip, root_in_zip=split)
        built[split] = BuiltArchive(path=out_zip, md5=md5, images=images, masks=masks)
    return built


# ---------------------------------------------------------------------------------------------
# DeepGlobe Land Cover
# ---------------------------------------------------------------------------------------------

DEEPGLOBE_CLASS_NAMES: tuple[str, ...] = (
    "urban_land",
    "agriculture_land",
    "rangeland",
    "forest_land",
    "water",
    "barren_land",
    "unknown",
)
DEEPGLOBE_COLORS: dict[int, tuple[int, int, int]] = {
    0: (0, 255, 255),  # urban
    1: (255, 255, 0),  # agriculture
    2: (255, 0, 255),  # rangeland
    3: (0, 255, 0),  # forest
    4: (0, 0, 255),  # water
    5: (255, 255, 255),  # barren
    6: (0, 0, 0),  # unknown
}
# None of the seven codes; the only 0/255 colour left over. Decoders must map it to unknown (6).
DEEPGLOBE_RED: tuple[int, int, int] = (255, 0, 0)
_DEEPGLOBE_UNKNOWN = 6
_DEEPGLOBE_CODES = np.zeros((256, 3), dtype=np.uint8)
_DEEPGLOBE_CODES[list(DEEPGLOBE_COLORS)] = list(DEEPGLOBE_COLORS.values())
_DEEPGLOBE_IMAGE_PALETTE = _palette(
    {
        0: (150, 140, 130),
        1: (170, 160, 90),
        2: (140, 130, 80),
        3: (50, 90, 50),
        4: (40, 60, 110),
        5: (190, 180, 160),
        6: (20, 20, 20),
    }
)


def decode_deepglobe_mask(rgb: U8Array) -> U8Array:
    """Class indices of a DeepGlobe RGB mask: threshold each channel at 128, map the colour codes.

    The 3-bit code left over by the seven classes, (1, 0, 0) i.e. red, maps to unknown (6).
    """
    bits = (np.asarray(rgb)[..., :3] >= 128).astype(np.uint8)
    code = (bits[..., 0] << 2) | (bits[..., 1] << 1) | bits[..., 2]
    table = np.full(8, _DEEPGLOBE_UNKNOWN, dtype=np.uint8)
    for cls, (r, g, b) in DEEPGLOBE_COLORS.items():
        table[((r >= 128) << 2) | ((g >= 128) << 1) | (b >= 128)] = cls
    decoded: U8Array = table[code]
    return decoded


def _deepglobe_pair(
    rng: np.random.Generator, size: int, *, noisy_colors: bool, red_patch: bool
) -> tuple[U8Array, U8Array, U8Array]:
    """(image RGB, mask RGB as written, class-index truth) for one DeepGlobe tile."""
    fill = int(rng.integers(0, 6))
    layout = _blocky_layout(rng, size, size, fill, [c for c in range(7) if c != fill])
    truth = layout.mask()
    image = _render_rgb(rng, layout, _DEEPGLOBE_IMAGE_PALETTE)
    rgb: U8Array = layout.paint(_DEEPGLOBE_CODES)
    if red_patch:
        side = max(2, size // 40)
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        rgb[y : y + side, x : x + side] = DEEPGLOBE_RED
        truth[y : y + side, x : x + side] = _DEEPGLOBE_UNKNOWN
    if noisy_colors:
        # "Not exactly 0/255": nudge every channel of ~0.5 % of pixels towards the middle,
        # never across 128, so thresholding still recovers the class.
        count = max(8, size * size // 200)
        flat = rgb.reshape(-1, 3)
        idx = rng.choice(size * size, size=count, replace=False)
        delta = rng.integers(1, 61, size=(count, 3), dtype=np.int16)
        values = flat[idx].astype(np.int16)
        flat[idx] = np.where(values >= 128, values - delta, values + delta).astype(np.uint8)
    return image, rgb, truth


def deepglobe_kaggle_zip(
    out_dir: Path,
    *,
    n_train: int = 2,
    n_test: int = 1,
    size: int = 2448,
    seed: int = 0,
    noisy_colors: bool = True,
) -> BuiltArchive:
    """Write DeepGlobe Land Cover in the Kaggle geoap96 layout: `out_dir/data.zip`.

    Members: `data/training_data/images/<id>_sat.jpg`, `data/training_data/masks/<id>_mask.png`,
    `data/test_data/images/<id>_sat.jpg`, `data/test_data/masks/<id>_mask.png`. Images are JPEG
    (quality 95); masks RGB PNG in the seven colour codes. With `noisy_colors`, ~0.5 % of mask
    pixels are nudged off the exact 0/255 values (never across 128) and the first mask gets a
    pure red patch, which is no class: the truth there is unknown (6). Keys are the id strings.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test < 1:
        raise ValueError(f"need at least one image, got n_train={n_train}, n_test={n_test}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _unique_ids(rng, n_train + n_test)
    images: dict[str, npt.NDArray[Any]] = {}
    masks: dict[str, U8Array] = {}
    out_zip = out_dir / "data.zip"
    with _staging(out_dir) as stage:
        for i, image_id in enumerate(ids):
            split_dir = stage / "data" / ("training_data" if i < n_train else "test_data")
            image, rgb, truth = _deepglobe_pair(
                rng, size, noisy_colors=noisy_colors, red_patch=noisy_colors and i == 0
            )
            jpeg, decoded = _jpeg_bytes(image)
            _write(split_dir / "images" / f"{image_id}_sat.jpg", jpeg)
            _write(split_dir / "masks" / f"{image_id}_mask.png", _png_bytes(rgb))
            images[str(image_id)] = decoded
            masks[str(image_id)] = truth
        md5 = zip_folder(stage, out_zip)
    return BuiltArchive(path=out_zip, md5=md5, images=images, masks=masks)


def deepglobe_balraj_folder(
    out_dir: Path,
    *,
    n_train: int = 2,
    size: int = 600,
    seed: int = 0,
    n_valid: int = 1,
    n_test: int = 1,
    noisy_colors: bool = True,
) -> BuiltArchive:
    """Write DeepGlobe Land Cover in the Kaggle balraj98 layout, as the folder `out_dir`.

    `train/<id>_sat.jpg` + `train/<id>_mask.png`, `valid/<id>_sat.jpg` and `test/<id>_sat.jpg`
    (no masks), `class_dict.csv` (`name,r,g,b`) and `metadata.csv`
    (`image_id,split,sat_image_path,mask_path`, mask_path empty for valid/test). Masks are noisy
    as in `deepglobe_kaggle_zip`. Only train ids appear in `images` and `masks`; md5 is "".
    """
    if n_train < 1 or n_valid < 0 or n_test < 0:
        raise ValueError(
            f"need n_train >= 1, n_valid >= 0, n_test >= 0; got {n_train}, {n_valid}, {n_test}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _unique_ids(rng, n_train + n_valid + n_test)
    splits = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    images: dict[str, npt.NDArray[Any]] = {}
    masks: dict[str, U8Array] = {}
    rows = ["image_id,split,sat_image_path,mask_path"]
    for i, (image_id, split) in enumerate(zip(ids, splits, strict=True)):
        image, rgb, truth = _deepglobe_pair(
            rng, size, noisy_colors=noisy_colors, red_patch=noisy_colors and i == 0
        )
        jpeg, decoded = _jpeg_bytes(image)
        sat = f"{split}/{image_id}_sat.jpg"
        _write(out_dir / sat, jpeg)
        mask_path = ""
        if split == "train":
            mask_path = f"{split}/{image_id}_mask.png"
            _write(out_dir / mask_path, _png_bytes(rgb))
            images[str(image_id)] = decoded
            masks[str(image_id)] = truth
        rows.append(f"{image_id},{split},{sat},{mask_path}")
    class_rows = ["name,r,g,b"] + [
        f"{name},{r},{g},{b}"
        for name, (r, g, b) in zip(DEEPGLOBE_CLASS_NAMES, DEEPGLOBE_COLORS.values(), strict=True)
    ]
    (out_dir / "class_dict.csv").write_text("\n".join(class_rows) + "\n")
    (out_dir / "metadata.csv").write_text("\n".join(rows) + "\n")
    return BuiltArchive(path=out_dir, md5="", images=images, masks=masks)


# ---------------------------------------------------------------------------------------------
# A user's own imagery
# ---------------------------------------------------------------------------------------------

CUSTOM_CLASS_NAMES: tuple[str, str, str] = ("background", "crop", "water")
CUSTOM_COLORS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (255, 200, 0), (0, 0, 255))
CUSTOM_IGNORE_INDEX = 255
CUSTOM_CRS = "EPSG:32633"
CUSTOM_CLASSES_YAML = (
    "names: [background, crop, water]\n"
    "colors: [[0, 0, 0], [255, 200, 0], [0, 0, 255]]\n"
    "ignore_index: 255\n"
)
_CUSTOM_PALETTE = _palette({0: (70, 90, 60), 1: (190, 170, 70), 2: (40, 60, 120)})
_CUSTOM_FORMATS = ("tif", "png", "jpg")
_CUSTOM_DTYPES: dict[str, tuple[float, float]] = {
    "uint8": (0.0, 255.0),
    "uint16": (0.0, 10000.0),
    "float32": (0.0, 1.0),
}


def _scene_transform(index: int, width: int) -> Any:
    """A 1 m north-up UTM 33N transform; scenes side by side, never overlapping."""
    return Affine(1.0, 0.0, 500_000.0 + index * (width + 100), 0.0, -1.0, 5_500_000.0)


def _write_geotiff(path: Path, array: npt.NDArray[Any], index: int) -> None:
    height, width, bands = array.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": str(array.dtype),
        "crs": CUSTOM_CRS,
        "transform": _scene_transform(index, width),
    }
    if bands == 3 and array.dtype == np.uint8:
        profile["photometric"] = "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(array, 2, 0))


def custom_labelled_folder(
    out_dir: Path,
    *,
    n: int = 3,
    height: int = 700,
    width: int = 900,
    seed: int = 0,
    fmt: str = "tif",
) -> BuiltArchive:
    """Write a user's labelled imagery as the folder `out_dir`.

    `images/<name>.<fmt>` (tif: 3-band uint8 GeoTIFF, EPSG:32633, 1 m pixels; png/jpg via PIL,
    jpg at quality 95), `masks/<name>.png` ('L', class ids 0..2, 255 = ignore on ~0.2 % of
    pixels) and `classes.yaml`. Names are `scene_00`, `scene_01`, ...; md5 is "".
    """
    if fmt not in _CUSTOM_FORMATS:
        raise ValueError(f"fmt must be one of {_CUSTOM_FORMATS}, got {fmt!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: dict[str, npt.NDArray[Any]] = {}
    masks: dict[str, U8Array] = {}
    for i in range(n):
        name = f"scene_{i:02d}"
        layout = _blocky_layout(rng, height, width, 0, [1, 2, 1, 2, 1])
        mask = layout.mask()
        ignored = rng.choice(height * width, size=max(4, height * width // 500), replace=False)
        mask.reshape(-1)[ignored] = CUSTOM_IGNORE_INDEX
        image = _render_rgb(rng, layout, _CUSTOM_PALETTE)
        image_path = out_dir / "images" / f"{name}.{fmt}"
        if fmt == "tif":
            _write_geotiff(image_path, image, i)
        elif fmt == "png":
            _write(image_path, _png_bytes(image))
        else:
            jpeg, image = _jpeg_bytes(image)
            _write(image_path, jpeg)
        _write(out_dir / "masks" / f"{name}.png", _png_bytes(mask))
        images[name] = image
        masks[name] = mask
    (out_dir / "classes.yaml").write_text(CUSTOM_CLASSES_YAML)
    return BuiltArchive(path=out_dir, md5="", images=images, masks=masks)


def custom_unlabelled_folder(
    out_dir: Path,
    *,
    n: int = 2,
    height: int = 800,
    width: int = 1000,
    seed: int = 0,
    bands: int = 3,
    dtype: str = "uint8",
) -> BuiltArchive:
    """Write a user's unlabelled scenes as `out_dir/<name>.tif` (GeoTIFF, EPSG:32633, 1 m).

    `dtype` is uint8 (values 0..255), uint16 (0..10000, reflectance-like) or float32 (0..1);
    any band count. `images` holds each full (H, W, bands) array as written; `masks` is empty.
    """
    if dtype not in _CUSTOM_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_CUSTOM_DTYPES)}, got {dtype!r}")
    if n < 1 or bands < 1:
        raise ValueError(f"n and bands must be >= 1, got n={n}, bands={bands}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = _CUSTOM_DTYPES[dtype]
    images: dict[str, npt.NDArray[Any]] = {}
    for i in range(n):
        name = f"scene_{i:02d}"
        layout = _blocky_layout(rng, height, width, 0, [1, 2, 3, 4])
        means = rng.uniform(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), size=(5, bands))
        noise = rng.normal(0.0, 0.03 * (hi - lo), size=(height, width, bands))
        values = np.clip(layout.paint(means) + noise, lo, hi)
        array = values.astype(dtype) if dtype == "float32" else np.rint(values).astype(dtype)
        _write_geotiff(out_dir / f"{name}.tif", array, i)
        images[name] = array
    return BuiltArchive(path=out_dir, md5="", images=images, masks={})
