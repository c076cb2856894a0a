"""Scenes -> tile store: one generic tiler over (scene, image, mask, split) records.

Work is planned first from the scenes' headers (sizes only), so the store's arrays are allocated
once at their final size and each scene knows the slice it owns. Scenes are then cut
independently (a process each, driven by the tile flow); a finished scene leaves its index rows
under ``.progress/`` so a rerun after a failure or a kill redoes only what is missing.
Images are read in windows one tile-row high: a 9000x9500 orthophoto never sits in memory whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image

from pipeline.data import store, subsets
from pipeline.data.store import StoreMeta
from pipeline.errors import DataError
from pipeline.files import atomic_write, write_text

if TYPE_CHECKING:
    from rasterio.windows import Window

# rasterio (GDAL) is imported where scenes are read: the catalog, the store and the synthetic
# painter import without it, as on the GPU machine, which carries no rasterio (README, "GPU check").

PLAN_SUFFIX = ".plan.json"
STAGING_SUFFIX = ".next"
GDAL_CACHE_MB = 64
PROGRESS_DIR = ".progress"
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class MaskDecoder:
    """How a mask file's pixels become class ids.

    ``index``: one band of class ids (or identical bands, as cv2 writes them). An RGB mask
    whose bands differ is decoded through ``colors`` (``colors[c]`` is class c, any other
    colour is an error), or refused when there are none.
    ``rgb_threshold``: each channel thresholded at 128 into a 3-bit code r*4 + g*2 + b, then
    ``lut[code]`` (DeepGlobe's official rule for colours that are not exactly 0/255).
    """

    kind: Literal["index", "rgb_threshold"] = "index"
    lut: tuple[int, ...] = ()
    # Codes that are no class's colour; their pixels go to lut[code] and are counted.
    off_palette_codes: tuple[int, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()


INDEX_MASK = MaskDecoder()


@dataclass(frozen=True)
class SceneRecord:
    """One source scene as a dataset's layout describes it."""

    scene: str
    image: Path
    mask: Path | None
    split: str = UNASSIGNED
    # Per-tile splits keyed by the official tile number (LandCover.ai's split files).
    tile_splits: Mapping[int, str] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    # The bands read as RGB; None: the scene must have exactly three.
    bands: tuple[int, int, int] | None = None
    # [low, high] -> 0..255 for imagery that is not uint8; None: must be uint8 already.
    scale: tuple[float, float] | None = None
    decoder: MaskDecoder = INDEX_MASK
    # The params section whose `bands` / `scale` fix this scene's band count or pixel type.
    params_section: str | None = None


@dataclass(frozen=True)
class ScenePlan:
    record: SceneRecord
    height: int
    width: int
    grid: tuple[tuple[int, int, int], ...]  # (k, y, x) of every tile, in numbering order
    offset: int  # first row of this scene in the store's arrays


@dataclass(frozen=True)
class TilingPlan:
    meta: StoreMeta
    scenes: tuple[ScenePlan, ...]

    @property
    def n_tiles(self) -> int:
        return sum(len(s.grid) for s in self.scenes)

    def fingerprint(self) -> str:
        """Changes whenever the inputs or the tiling would: a stale partial store is discarded."""
        payload: dict[str, Any] = {
            "meta": json.loads(self.meta.to_json()),
            "scenes": [
                [
                    repr(s.record),
                    s.height,
                    s.width,
                    _file_stamp(s.record.image),
                    _file_stamp(s.record.mask),
                ]
                for s in self.scenes
            ],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _file_stamp(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def official_tile_grid(height: int, width: int, tile_size: int) -> list[tuple[int, int, int]]:
    """(k, y, x) of the full tiles, numbered as LandCover.ai's split.py numbers them.

    Its counter k runs over every grid position in row-major order, partial ones included, but
    only full tiles are written: so ids skip the numbers of the partial right/bottom positions.
    """
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    grid = []
    k = 0
    for y in range(0, height, tile_size):
        for x in range(0, width, tile_size):
            if y + tile_size <= height and x + tile_size <= width:
                grid.append((k, y, x))
            k += 1
    return grid


def tile_grid(
    height: int, width: int, tile_size: int, remainder: str = "drop"
) -> list[tuple[int, int, int]]:
    """The official grid (``drop``), or one whose last row and column are aligned to the scene's
    edges (``overlap``), overlapping their neighbours so that every pixel lies in a tile."""
    if remainder == "drop":
        return official_tile_grid(height, width, tile_size)
    if height < tile_size or width < tile_size:
        return []

    def starts(extent: int) -> list[int]:
        first = list(range(0, extent - tile_size + 1, tile_size))
        return first if first[-1] + tile_size == extent else [*first, extent - tile_size]

    positions = [(y, x) for y in starts(height) for x in starts(width)]
    return [(k, y, x) for k, (y, x) in enumerate(positions)]


class _DecodedImage:
    """PNG/JPEG through PIL, with the part of rasterio's reader interface tiling uses.

    PIL decodes JPEG exactly as cv2 does (libjpeg-turbo), and so as LandCover.ai's split.py,
    torchgeo and most training code see it; GDAL's JPEG decoder differs by up to 17 levels
    at chroma edges (mean 0.28 on a DeepGlobe image). These formats are decoded whole anyway.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with Image.open(path) as header:
                self.width, self.height = header.size
                mode = header.mode
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read as an image ({exc})") from None
        self.count = len(mode) if mode in ("RGB", "RGBA", "CMYK", "LA") else 1
        self.dtypes = [
            "uint16"
            if mode.startswith("I;16")
            else "int32"
            if mode == "I"
            else "float32"
            if mode == "F"
            else "uint8"
        ] * self.count
        self._pixels: npt.NDArray[Any] | None = None

    def __enter__(self) -> _DecodedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pixels = None

    def read(self, indexes: int | list[int] | None = None, window: Window | None = None) -> Any:
        if self._pixels is None:
            try:
                with Image.open(self.path) as image:
                    pixels = np.asarray(image)
            except (OSError, SyntaxError) as exc:
                raise DataError(f"{self.path}: corrupt or truncated image ({exc})") from None
            self._pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        bands = self._pixels
        if window is not None:
            (r0, r1), (c0, c1) = window.toranges()
            bands = bands[:, r0:r1, c0:c1]
        if indexes is None:
            return bands
        if isinstance(indexes, int):
            return bands[indexes - 1]
        return bands[[i - 1 for i in indexes]]


def open_raster(path: Path) -> Any:
    """A scene opened for windowed reads: rasterio, or PIL behind the same calls for PNG/JPEG."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return _DecodedImage(path)
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            # PNG/JPEG scenes carry no georeferencing; that is fine for tiling.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as exc:
        raise DataError(f"{path}: cannot read as a raster ({exc})") from None


def scene_size(record: SceneRecord) -> tuple[int, int]:
    """(height, width) of a scene whose bands, pixel type and mask fit its record, or a
    one-line DataError naming the file and the params to set."""

    def hint(key: str) -> str:
        return f"; set {record.params_section}.{key}" if record.params_section else ""

    with open_raster(record.image) as src:
        height, width, count, dtype = src.height, src.width, src.count, src.dtypes[0]
    if record.bands is None and count != 3:
        raise DataError(f"{record.image}: expected 3 bands (RGB), found {count}{hint('bands')}")
    if record.bands is not None and max(record.bands) > count:
        raise DataError(
            f"{record.image}: has {count} bands, bands {list(record.bands)} asked{hint('bands')}"
        )
    if dtype != "uint8" and record.scale is None:
        raise DataError(f"{record.image}: expected uint8 pixels, found {dtype}{hint('scale')}")
    if record.mask is not None:
        with open_raster(record.mask) as msk:
            mask_size = (msk.height, msk.width)
        if mask_size != (height, width):
            raise DataError(
                f"{record.mask}: mask is {mask_size[1]}x{mask_size[0]} but its image "
                f"{record.image.name} is {width}x{height}"
            )
    return height, width


def plan_tiling(records: Sequence[SceneRecord], meta: StoreMeta) -> TilingPlan:
    """Read every scene's header and assign each scene its slice of the store."""
    names = [r.scene for r in records]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataError(f"scene name {duplicate!r} occurs twice; scene names must be unique")
    scenes = []
    offset = 0
    for record in records:
        height, width = scene_size(record)
        grid = tuple(tile_grid(height, width, meta.tile_size, meta.remainder))
        scenes.append(ScenePlan(record, height, width, grid, offset))
        offset += len(grid)
    if scenes and offset == 0:
        # Before the store is touched: an earlier store is kept rather than replaced by nothing.
        largest = max(scenes, key=lambda s: s.height * s.width)
        raise DataError(
            f"data.tiling.{meta.dataset}.tile_size: no scene holds a full "
            f"{meta.tile_size}x{meta.tile_size} tile (the largest, {largest.record.image.name}, "
            f"is {largest.width}x{largest.height}); lower it"
        )
    return TilingPlan(meta, tuple(scenes))


class StoreBuild(NamedTuple):
    directory: Path  # where the scenes are cut: the store itself, or its staging folder
    pending: list[ScenePlan]  # the scenes still to cut


def staging_dir(out_dir: Path) -> Path:
    """Where a changed plan is built while the finished store of the old one stays usable."""
    return out_dir.with_name(out_dir.name + STAGING_SUFFIX)


def plan_marker(directory: Path) -> Path:
    """The plan a store (or its staging folder) was cut by, kept beside it, not in it: its
    fingerprint holds this machine's paths and file times, and the store is a DVC output that
    must be the same bytes on every machine."""
    return directory.with_name(directory.name + PLAN_SUFFIX)


def _holds_plan(directory: Path, fingerprint: str) -> bool:
    marker = plan_marker(directory)
    return (
        directory.is_dir()
        and marker.exists()
        and json.loads(marker.read_text()).get("fingerprint") == fingerprint
    )


def prepare_store(plan: TilingPlan, out_dir: Path) -> StoreBuild:
    """Where to cut which scenes: resume a partial store of the same plan, or start one.

    A finished store of another plan is never deleted here: the new one is built beside it
    (``<out>.next``) and replaces it only once complete (:func:`finalize_store`), so a retile
    that fails on a corrupt scene, a full disk or a kill leaves the old store whole.
    """
    fingerprint = plan.fingerprint()
    if _holds_plan(out_dir, fingerprint):
        work = out_dir
    elif _holds_plan(staging_dir(out_dir), fingerprint):
        work = staging_dir(out_dir)
    else:
        work = staging_dir(out_dir) if (out_dir / store.INDEX_FILE).exists() else out_dir
        plan_marker(work).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)  # a partial store of another plan
        store.allocate(work, plan.n_tiles, plan.meta.tile_size, plan.meta.has_masks)
        (work / PROGRESS_DIR).mkdir(parents=True)
        write_text(
            plan_marker(work),
            json.dumps({"fingerprint": fingerprint, "n_tiles": plan.n_tiles}),
        )
        return StoreBuild(work, list(plan.scenes))
    if (work / store.INDEX_FILE).exists():
        return StoreBuild(work, [])
    done = {p.stem for p in (work / PROGRESS_DIR).glob("*.parquet")}
    return StoreBuild(work, [s for s in plan.scenes if s.record.scene not in done])


def to_uint8(strip: npt.NDArray[Any], scale: tuple[float, float] | None) -> npt.NDArray[np.uint8]:
    """Pixels as uint8: as they are, or ``scale``'s (low, high) stretched to 0..255."""
    if scale is None:
        return strip.astype(np.uint8, copy=False)
    low, high = scale
    scaled = (strip.astype(np.float32) - low) * (255.0 / (high - low))
    out: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def decode_mask(
    strip: npt.NDArray[np.uint8], decoder: MaskDecoder, path: Path
) -> tuple[npt.NDArray[np.uint8], int]:
    """(bands, H, W) mask pixels -> (H, W) class ids, and the count of off-palette pixels."""
    if decoder.kind == "rgb_threshold":
        if strip.shape[0] < 3:
            raise DataError(f"{path}: expected an RGB mask, found {strip.shape[0]} band(s)")
        bits = strip[:3] >= 128
        codes = bits[0] * 4 + bits[1] * 2 + bits[2]
        lut = np.asarray(decoder.lut, dtype=np.uint8)
        off = int(np.isin(codes, decoder.off_palette_codes).sum())
        return lut[codes], off
    if strip.shape[0] == 1 or (strip == strip[:1]).all():
        return strip[0], 0
    if not decoder.colors or strip.shape[0] < 3:
        raise DataError(
            f"{path}: mask has {strip.shape[0]} bands that differ; a class-id mask needs one "
            "band, an RGB mask needs colours in the classes file"
        )
    packed = (strip[0].astype(np.int32) << 16) | (strip[1].astype(np.int32) << 8) | strip[2]
    out = np.full(packed.shape, 255, dtype=np.uint8)
    for class_id, (r, g, b) in enumerate(decoder.colors):
        out[packed == (r << 16 | g << 8 | b)] = class_id
    unmatched = out == 255
    if unmatched.any():
        value = int(packed[unmatched][0])
        colour = (value >> 16, (value >> 8) & 255, value & 255)
        raise DataError(
            f"{path}: mask colour {colour} is none of the classes file's colours "
            f"({int(unmatched.sum())} pixels in this strip)"
        )
    return out, 0


def _check_mask_values(counts: npt.NDArray[np.int64], meta: StoreMeta, path: Path) -> None:
    n_classes = len(meta.class_names)
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= n_classes and v != meta.ignore_index]
    if bad:
        raise DataError(
            f"{path}: mask values {bad[:8]} are outside the class set 0..{n_classes - 1}"
            + (f" (ignore index {meta.ignore_index})" if meta.ignore_index is not None else "")
        )


def _read_strip(
    src: Any, record: SceneRecord, window: Window, buffer: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """A (rows, cols, 3) uint8 strip of the scene's RGB bands.

    GeoTIFFs are read by GDAL straight into ``buffer`` in pixel order (one buffer for every
    tile row: no allocation per row, no transposing copy); PNG/JPEG scenes and imagery that
    needs scaling go through an intermediate array.
    """
    bands = list(record.bands or (1, 2, 3))
    if isinstance(src, _DecodedImage) or record.scale is not None:
        strip: npt.NDArray[np.uint8] = to_uint8(src.read(bands, window=window), record.scale)
        return strip.transpose(1, 2, 0)
    view = buffer[: window.height, : window.width]
    src.read(bands, window=window, out=view.transpose(2, 0, 1))
    return view


def tile_scene(scene: ScenePlan, out_dir: Path, meta: StoreMeta, threads: int = 1) -> int:
    """Cut one scene into its slice of the store and record its index rows. Returns tiles cut.

    ``threads``: GDAL decodes a strip's compressed blocks on that many threads. GDAL's block
    cache is capped at ``GDAL_CACHE_MB``: a strip is read in one request, so each block is
    decoded once anyway, and the cache would otherwise grow with the scene (hundreds of MB for
    a 9000x9500 orthophoto) while serving nothing.
    """
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    record, size = scene.record, meta.tile_size
    images, masks = store.open_arrays(out_dir, mode="r+")
    n_classes = len(meta.class_names)
    rows: list[dict[str, Any]] = []
    by_row: dict[int, list[tuple[int, int, int]]] = {}
    for k, y, x in scene.grid:
        by_row.setdefault(y, []).append((k, y, x))
    buffer = np.empty((size, scene.width, 3), dtype=np.uint8)
    reading = record.image  # the file a read failure is about
    try:
        with ExitStack() as stack:
            stack.enter_context(
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_NUM_THREADS=str(max(1, threads)))
            )
            src = stack.enter_context(open_raster(record.image))
            msk = stack.enter_context(open_raster(record.mask)) if record.mask else None
            position = scene.offset
            for y, cells in by_row.items():
                # One strip per tile row: bounded memory and few, large reads.
                window = Window(0, y, max(x for _, _, x in cells) + size, size)
                reading = record.image
                strip = _read_strip(src, record, window, buffer)
                reading = record.mask or record.image
                mask_strip = msk.read(window=window) if msk is not None else None
                for k, _, x in cells:
                    images[position] = strip[:, x : x + size]
                    row: dict[str, Any] = {
                        "tile_id": f"{record.scene}_{k}",
                        "scene": record.scene,
                        "k": k,
                        "y": y,
                        "x": x,
                        "split": _split_of(record, k),
                        "row": position,
                        "labelled": mask_strip is not None,
                        **record.extra,
                    }
                    if mask_strip is not None and masks is not None and record.mask is not None:
                        tile_mask, off_palette = decode_mask(
                            mask_strip[:, :, x : x + size], record.decoder, record.mask
                        )
                        masks[position] = tile_mask
                        counts = np.bincount(tile_mask.ravel(), minlength=256).astype(np.int64)
                        _check_mask_values(counts, meta, record.mask or record.image)
                        for c in range(n_classes):
                            row[store.hist_column(c)] = int(counts[c])
                        if record.decoder.off_palette_codes:
                            row["off_palette_px"] = off_palette
                    rows.append(row)
                    position += 1
    except RasterioError as exc:
        # GDAL's own words (which block failed) are in the cause; rasterio's say "see above".
        raise DataError(
            f"{reading}: read failed, the file is corrupt or truncated ({exc.__cause__ or exc})"
        ) from None
    images.flush()
    if masks is not None:
        masks.flush()
    with atomic_write(out_dir / PROGRESS_DIR / f"{record.scene}.parquet") as handle:
        pd.DataFrame(rows).to_parquet(handle, index=False)
    return len(rows)


def _split_of(record: SceneRecord, k: int) -> str:
    if record.tile_splits is not None:
        return record.tile_splits.get(k, UNASSIGNED)
    return record.split


def finalize_store(plan: TilingPlan, out_dir: Path) -> pd.DataFrame:
    """Gather the scenes' rows into index.parquet, with the label-fraction subsets; a store
    built in the staging folder then replaces the old one."""
    staging = staging_dir(out_dir)
    if _holds_plan(staging, plan.fingerprint()):
        index = _write_index(plan, staging)
        # A kill between these steps leaves the finished staging store, taken next run (or,
        # after the rename, a store without its marker, which the next run cuts again).
        plan_marker(out_dir).unlink(missing_ok=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
        os.replace(plan_marker(staging), plan_marker(out_dir))
        return index
    return _write_index(plan, out_dir)


def _write_index(plan: TilingPlan, out_dir: Path) -> pd.DataFrame:
    index_path = out_dir / store.INDEX_FILE
    if index_path.exists():
        return store.read_index(out_dir)[0]
    parts = []
    for scene in plan.scenes:
        marker = out_dir / PROGRESS_DIR / f"{scene.record.scene}.parquet"
        if not marker.exists():
            raise DataError(f"{out_dir}: scene {scene.record.scene} was not tiled; rerun the stage")
        parts.append(pd.read_parquet(marker))
    index = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if index.empty:
        raise DataError(
            f"{out_dir}: no full {plan.meta.tile_size}x{plan.meta.tile_size} tile in any scene"
        )
    index = index.sort_values("row", ignore_index=True)
    meta = plan.meta
    # Unlabelled rows (LoveDA's Test) have no histogram: zero counts, not NaN.
    counted = [c for c in index.columns if c.startswith(("hist_", "off_palette_px"))]
    index[counted] = index[counted].fillna(0).astype(np.int64)
    if meta.has_masks and meta.label_fractions:
        index = store.add_label_fractions(
            index, len(meta.class_names), meta.ignore_index, meta.label_fractions, meta.subset_seed
        )
    store.write_index(out_dir, index, meta)
    shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)
    return index


def summarize(index: pd.DataFrame, meta: StoreMeta) -> dict[str, Any]:
    """Counts a user checks after tiling: tiles per split, subset sizes, class pixel shares."""
    summary: dict[str, Any] = {
        "tiles": len(index),
        "tiles_per_split": {str(k): int(v) for k, v in index["split"].value_counts().items()},
    }
    fraction_columns = [c for c in index.columns if c.startswith(subsets.FRACTION_PREFIX)]
    if fraction_columns:
        summary["label_subsets"] = {c: int(index[c].sum()) for c in fraction_columns}
    if meta.has_masks:
        pixels = {
            name: int(index[store.hist_column(c)].sum()) for c, name in enumerate(meta.class_names)
        }
        total = sum(pixels.values()) or 1
        summary["class_pixel_share"] = {k: round(v / total, 4) for k, v in pixels.items()}
    if "off_palette_px" in index:
        summary["off_palette_px"] = int(index["off_palette_px"].sum())
    if "labelled" in index and not index["labelled"].all():
        summary["unlabelled_tiles"] = int((~index["labelled"]).sum())
    return summary
