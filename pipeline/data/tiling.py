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
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pipeline.data import store
from pipeline.data.store import StoreMeta
from pipeline.errors import DataError

PLAN_FILE = "plan.json"
PROGRESS_DIR = ".progress"
UNASSIGNED = "unassigned"


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


@dataclass(frozen=True)
class ScenePlan:
    record: SceneRecord
    height: int
    width: int
    grid: tuple[tuple[int, int, int], ...]  # (k, y, x) of every full tile, official numbering
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
                    s.record.scene,
                    str(s.record.image),
                    str(s.record.mask),
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


def _scene_size(record: SceneRecord) -> tuple[int, int]:
    try:
        with rasterio.open(record.image) as src:
            height, width, bands, dtype = src.height, src.width, src.count, src.dtypes[0]
        if record.mask is not None:
            with rasterio.open(record.mask) as msk:
                mask_size = (msk.height, msk.width)
            if mask_size != (height, width):
                raise DataError(
                    f"{record.mask}: mask is {mask_size[1]}x{mask_size[0]} but its image "
                    f"{record.image.name} is {width}x{height}"
                )
    except RasterioError as exc:
        raise DataError(f"{record.image}: cannot read as a raster ({exc})") from None
    if bands != 3:
        raise DataError(f"{record.image}: expected 3 bands (RGB), found {bands}")
    if dtype != "uint8":
        raise DataError(f"{record.image}: expected uint8 pixels, found {dtype}")
    return height, width


def plan_tiling(records: Sequence[SceneRecord], meta: StoreMeta) -> TilingPlan:
    """Read every scene's header and assign each scene its slice of the store."""
    scenes = []
    offset = 0
    for record in records:
        height, width = _scene_size(record)
        grid = tuple(official_tile_grid(height, width, meta.tile_size))
        scenes.append(ScenePlan(record, height, width, grid, offset))
        offset += len(grid)
    return TilingPlan(meta, tuple(scenes))


def prepare_store(plan: TilingPlan, out_dir: Path) -> list[ScenePlan]:
    """Allocate the store (or keep a partial one of the same plan); return the scenes to cut."""
    fingerprint = plan.fingerprint()
    plan_path = out_dir / PLAN_FILE
    progress = out_dir / PROGRESS_DIR
    if plan_path.exists() and json.loads(plan_path.read_text()).get("fingerprint") == fingerprint:
        if (out_dir / store.INDEX_FILE).exists():
            return []
        done = {p.stem for p in progress.glob("*.parquet")}
        return [s for s in plan.scenes if s.record.scene not in done]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    store.allocate(out_dir, plan.n_tiles, plan.meta.tile_size, plan.meta.has_masks)
    progress.mkdir(parents=True)
    plan_path.write_text(json.dumps({"fingerprint": fingerprint, "n_tiles": plan.n_tiles}))
    return list(plan.scenes)


def _check_mask_values(counts: npt.NDArray[np.int64], meta: StoreMeta, path: Path) -> None:
    n_classes = len(meta.class_names)
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= n_classes and v != meta.ignore_index]
    if bad:
        raise DataError(
            f"{path}: mask values {bad[:8]} are outside the class set 0..{n_classes - 1}"
            + (f" (ignore index {meta.ignore_index})" if meta.ignore_index is not None else "")
        )


def tile_scene(scene: ScenePlan, out_dir: Path, meta: StoreMeta) -> int:
    """Cut one scene into its slice of the store and record its index rows. Returns tiles cut."""
    record, size = scene.record, meta.tile_size
    images, masks = store.open_arrays(out_dir, mode="r+")
    n_classes = len(meta.class_names)
    rows: list[dict[str, Any]] = []
    by_row: dict[int, list[tuple[int, int, int]]] = {}
    for k, y, x in scene.grid:
        by_row.setdefault(y, []).append((k, y, x))
    try:
        with ExitStack() as stack:
            src = stack.enter_context(rasterio.open(record.image))
            msk = stack.enter_context(rasterio.open(record.mask)) if record.mask else None
            position = scene.offset
            for y, cells in by_row.items():
                # One strip per tile row: bounded memory and few, large reads.
                window = Window(0, y, cells[-1][2] + size, size)
                strip = src.read((1, 2, 3), window=window)
                mask_strip = msk.read(1, window=window) if msk is not None else None
                for k, _, x in cells:
                    images[position] = strip[:, :, x : x + size].transpose(1, 2, 0)
                    row: dict[str, Any] = {
                        "tile_id": f"{record.scene}_{k}",
                        "scene": record.scene,
                        "k": k,
                        "y": y,
                        "x": x,
                        "split": _split_of(record, k),
                        "row": position,
                        **record.extra,
                    }
                    if mask_strip is not None and masks is not None:
                        tile_mask = mask_strip[:, x : x + size]
                        masks[position] = tile_mask
                        counts = np.bincount(tile_mask.ravel(), minlength=256).astype(np.int64)
                        _check_mask_values(counts, meta, record.mask or record.image)
                        for c in range(n_classes):
                            row[store.hist_column(c)] = int(counts[c])
                    rows.append(row)
                    position += 1
    except RasterioError as exc:
        raise DataError(f"{record.image}: read failed ({exc})") from None
    images.flush()
    if masks is not None:
        masks.flush()
    marker = out_dir / PROGRESS_DIR / f"{record.scene}.parquet"
    tmp = marker.with_suffix(".tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    tmp.replace(marker)
    return len(rows)


def _split_of(record: SceneRecord, k: int) -> str:
    if record.tile_splits is not None:
        return record.tile_splits.get(k, UNASSIGNED)
    return record.split


def finalize_store(plan: TilingPlan, out_dir: Path) -> pd.DataFrame:
    """Gather the scenes' rows into index.parquet, with the label-fraction subsets."""
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
    fraction_columns = [c for c in index.columns if c.startswith("in_frac_")]
    if fraction_columns:
        summary["label_subsets"] = {c: int(index[c].sum()) for c in fraction_columns}
    if meta.has_masks:
        pixels = {
            name: int(index[store.hist_column(c)].sum()) for c, name in enumerate(meta.class_names)
        }
        total = sum(pixels.values()) or 1
        summary["class_pixel_share"] = {k: round(v / total, 4) for k, v in pixels.items()}
    return summary
