"""The synthetic scenes as the LandCover.ai v1 archive (GeoTIFFs, split files, zip), or
painted straight into a tile store."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import SyntheticParams
from pipeline.data.tiling import official_tile_grid
from pipeline.synthetic.drawing import ByteImage
from pipeline.synthetic.scene import synth_scene

LANDCOVERAI_CLASS_NAMES: tuple[str, ...] = ("background", "building", "woodland", "water", "road")
PIXEL_SIZE_M = 0.25
LANDCOVERAI_CRS = "EPSG:2180"
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
# The earliest timestamp a zip can hold: archive bytes must not depend on the clock.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# Internal 256 x 256 blocks: a windowed read of one 512 tile decodes only the blocks it covers.
_GTIFF_BLOCK = 256


@dataclass(frozen=True)
class SceneSpec:
    """One scene of the archive: map-sheet name and size in pixels."""

    name: str
    height: int
    width: int


@dataclass(frozen=True)
class SyntheticArchive:
    """What `write_landcoverai_archive` wrote."""

    path: Path
    md5: str
    scenes: list[SceneSpec]
    splits: dict[str, list[str]]
    class_pixel_counts: dict[str, int]


# --------------------------------------------------------------------------------------------
# Archive
# --------------------------------------------------------------------------------------------


def _scene_names(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct map-sheet codes like M-33-20-D-c-4-2 (1:10 000 sheets of the 1992 grid)."""
    names: set[str] = set()
    while len(names) < n:
        names.add(
            f"{'MN'[int(rng.integers(2))]}-{33 + int(rng.integers(2))}-{int(rng.integers(1, 145))}"
            f"-{'ABCD'[int(rng.integers(4))]}-{'abcd'[int(rng.integers(4))]}"
            f"-{int(rng.integers(1, 5))}-{int(rng.integers(1, 5))}"
        )
    return sorted(names)


def _tile_sort_key(tile_id: str) -> tuple[str, int]:
    scene, k = tile_id.rsplit("_", 1)
    return scene, int(k)


def _split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Tiles per split: largest remainder rounding, at least one each when n >= 3."""
    raw = [f * n for f in fractions]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(3), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            while counts[i] == 0:
                counts[max(range(3), key=lambda j: counts[j])] -= 1
                counts[i] += 1
    return counts


def _write_geotiffs(
    folder: Path, name: str, image: ByteImage, mask: ByteImage, origin: tuple[float, float]
) -> tuple[Path, Path]:
    """images/<name>.tif and masks/<name>.tif under `folder`, georeferenced like the real data."""
    import rasterio  # here, not above: painting needs no GDAL (painted_tile_store)
    from rasterio.transform import Affine

    h, w = mask.shape
    common = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "dtype": "uint8",
        "crs": LANDCOVERAI_CRS,
        # Same as rasterio.transform.from_origin, whose Affine `*` now warns on every call.
        "transform": Affine(PIXEL_SIZE_M, 0.0, origin[0], 0.0, -PIXEL_SIZE_M, origin[1]),
        "compress": "deflate",
        "predictor": 2,
        "tiled": True,
        "blockxsize": _GTIFF_BLOCK,
        "blockysize": _GTIFF_BLOCK,
    }
    img_path = folder / "images" / f"{name}.tif"
    mask_path = folder / "masks" / f"{name}.tif"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        img_path, "w", count=3, photometric="RGB", interleave="pixel", **common
    ) as dst:
        dst.write(np.moveaxis(image, 2, 0))
    with rasterio.open(mask_path, "w", count=1, **common) as dst:
        dst.write(mask, 1)
    return img_path, mask_path


def _zip_info(name: str, compress: int, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
    info.compress_type = compress
    info.create_system = 3  # unix, whatever the host: the attributes below are unix ones
    info.external_attr = 0o100644 << 16
    info.file_size = size
    return info


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Layout:
    """Scenes, their georeference origins, the tiles' splits and each scene's random stream."""

    scenes: list[SceneSpec]
    origins: list[tuple[float, float]]
    splits: dict[str, list[str]]
    scene_seeds: list[np.random.SeedSequence]


def _layout(
    n_scenes: int,
    height: int,
    width: int,
    tile_size: int,
    split_fractions: tuple[float, float, float],
    seed: int,
) -> _Layout:
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    if tile_size <= 0 or height < tile_size or width < tile_size:
        raise ValueError(f"scene {height}x{width} must be at least one tile of {tile_size}")
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions):
        raise ValueError(f"split_fractions must be 3 non-negative numbers: {split_fractions}")
    if not math.isclose(sum(split_fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must sum to 1, got {sum(split_fractions)}")
    # Independent streams: layout, split and every scene can change without shifting the rest.
    layout_seq, split_seq, *scene_seqs = np.random.SeedSequence(seed).spawn(n_scenes + 2)
    layout = np.random.default_rng(layout_seq)
    scenes: list[SceneSpec] = []
    origins: list[tuple[float, float]] = []
    for name in _scene_names(n_scenes, layout):
        # +-15 % around the requested size so partial grid positions (id gaps) occur.
        sh = max(tile_size, round(height * layout.uniform(0.85, 1.15)))
        sw = max(tile_size, round(width * layout.uniform(0.85, 1.15)))
        scenes.append(SceneSpec(name=name, height=sh, width=sw))
        origins.append(
            (float(layout.integers(400_000, 700_000)), float(layout.integers(300_000, 800_000)))
        )
    tile_ids = [
        f"{spec.name}_{k}"
        for spec in scenes
        for k, _, _ in official_tile_grid(spec.height, spec.width, tile_size)
    ]
    order = np.random.default_rng(split_seq).permutation(len(tile_ids))
    bounds = np.cumsum([0, *_split_counts(len(tile_ids), split_fractions)])
    splits = {
        split: sorted(
            (tile_ids[int(i)] for i in order[bounds[j] : bounds[j + 1]]), key=_tile_sort_key
        )
        for j, split in enumerate(SPLIT_NAMES)
    }
    return _Layout(scenes, origins, splits, scene_seqs)


def write_landcoverai_archive(
    out_zip: Path,
    *,
    n_scenes: int = 6,
    height: int = 1600,
    width: int = 1700,
    tile_size: int = 512,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> SyntheticArchive:
    """Write a byte-for-byte reproducible fake `landcover.ai.v1.zip` to `out_zip`."""
    plan = _layout(n_scenes, height, width, tile_size, split_fractions, seed)
    scenes, origins, splits, scene_seqs = plan.scenes, plan.origins, plan.splits, plan.scene_seeds
    out_zip = Path(out_zip)

    pixel_counts = np.zeros(len(LANDCOVERAI_CLASS_NAMES), np.int64)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="landcoverai-synth-") as tmp:
        folder = Path(tmp)
        members: dict[str, tuple[Path | bytes, int]] = {}
        for spec, origin, seq in zip(scenes, origins, scene_seqs, strict=True):
            image, mask = synth_scene(spec.height, spec.width, np.random.default_rng(seq))
            pixel_counts += np.bincount(mask.ravel(), minlength=len(pixel_counts))[
                : len(pixel_counts)
            ]
            img_path, mask_path = _write_geotiffs(folder, spec.name, image, mask, origin)
            del image, mask
            members[f"images/{spec.name}.tif"] = (img_path, zipfile.ZIP_STORED)
            members[f"masks/{spec.name}.tif"] = (mask_path, zipfile.ZIP_STORED)
        for split, ids in splits.items():
            text = "".join(f"{tile_id}\n" for tile_id in ids).encode()
            members[f"{split}.txt"] = (text, zipfile.ZIP_DEFLATED)

        # Atomic: readers see the old archive or the complete new one, never a partial zip.
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{out_zip.name}.", suffix=".tmp", dir=out_zip.parent
        )
        tmp_zip = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                with zipfile.ZipFile(fh, "w") as zf:
                    for name in sorted(members):
                        source, compress = members[name]
                        if isinstance(source, bytes):
                            zf.writestr(_zip_info(name, compress, len(source)), source)
                            continue
                        info = _zip_info(name, compress, source.stat().st_size)
                        with source.open("rb") as src, zf.open(info, "w") as dst:
                            for chunk in iter(lambda: src.read(1 << 20), b""):
                                dst.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            tmp_zip.chmod(0o644)
            os.replace(tmp_zip, out_zip)
        except BaseException:
            tmp_zip.unlink(missing_ok=True)
            raise

    return SyntheticArchive(
        path=out_zip,
        md5=_md5(out_zip),
        scenes=scenes,
        splits=splits,
        class_pixel_counts={
            name: int(n) for name, n in zip(LANDCOVERAI_CLASS_NAMES, pixel_counts, strict=True)
        },
    )


def write_archive_from_params(
    out_zip: Path, spec: SyntheticParams, tile_size: int
) -> SyntheticArchive:
    """The archive the ``synthetic`` params section describes (the demo's synth stage)."""
    train, val, test = spec.split_fractions
    return write_landcoverai_archive(
        out_zip,
        n_scenes=spec.scenes,
        height=spec.height,
        width=spec.width,
        tile_size=tile_size,
        split_fractions=(train, val, test),
        seed=spec.seed,
    )


def synthetic_tile_store(
    work: Path,
    *,
    n_scenes: int = 2,
    height: int = 1100,
    width: int = 1200,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 3,
) -> Path:
    """A synthetic archive tiled into a LandCover.ai tile store at ``work/tiles`` (512 px).

    For tests and benchmarks that need a store without running the download and tile flows.
    """
    from pipeline.data import tiling
    from pipeline.data.catalog import LANDCOVERAI, landcoverai_records
    from pipeline.data.store import StoreMeta

    work.mkdir(parents=True, exist_ok=True)
    archive = write_landcoverai_archive(
        work / "landcover.ai.v1.zip",
        n_scenes=n_scenes,
        height=height,
        width=width,
        split_fractions=split_fractions,
        seed=seed,
    )
    with zipfile.ZipFile(archive.path) as zf:
        zf.extractall(work / "raw")
    meta = StoreMeta(dataset="landcoverai", tile_size=512, class_names=LANDCOVERAI.class_names)
    plan = tiling.plan_tiling(landcoverai_records(work / "raw"), meta)
    build = tiling.prepare_store(plan, work / "tiles")
    for scene in build.pending:
        tiling.tile_scene(scene, build.directory, meta)
    tiling.finalize_store(plan, work / "tiles")
    return work / "tiles"


def painted_tile_store(
    out: Path,
    *,
    n_scenes: int = 2,
    height: int = 1100,
    width: int = 1200,
    tile_size: int = 512,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    label_fractions: tuple[float, ...] = (1.0, 0.5, 0.25),
    seed: int = 3,
) -> Path:
    """The tiles ``synthetic_tile_store`` cuts from the same scenes, painted straight into a
    tile store at ``out``: no GeoTIFF, no archive, no GDAL (the GPU machine has no rasterio).

    Rows follow the scenes in name order and each scene's tiles in LandCover.ai's numbering;
    the training split carries the nested label subsets (``in_frac_<f>``).
    """
    import pandas as pd

    from pipeline.data import store
    from pipeline.data.store import StoreMeta

    plan = _layout(n_scenes, height, width, tile_size, split_fractions, seed)
    split_of = {tile: split for split, tiles in plan.splits.items() for tile in tiles}
    grids = [official_tile_grid(s.height, s.width, tile_size) for s in plan.scenes]
    store.allocate(out, sum(len(g) for g in grids), tile_size, has_masks=True)
    images, masks = store.open_arrays(out, mode="r+")
    assert masks is not None
    rows: list[dict[str, object]] = []
    for spec, grid, seq in zip(plan.scenes, grids, plan.scene_seeds, strict=True):
        image, mask = synth_scene(spec.height, spec.width, np.random.default_rng(seq))
        for k, y, x in grid:
            row = len(rows)
            images[row] = image[y : y + tile_size, x : x + tile_size]
            masks[row] = mask[y : y + tile_size, x : x + tile_size]
            counts = np.bincount(masks[row].ravel(), minlength=len(LANDCOVERAI_CLASS_NAMES))
            rows.append(
                {
                    "tile_id": f"{spec.name}_{k}",
                    "scene": spec.name,
                    "k": k,
                    "y": y,
                    "x": x,
                    "split": split_of[f"{spec.name}_{k}"],
                    "row": row,
                    "labelled": True,
                    **{store.hist_column(c): int(n) for c, n in enumerate(counts)},
                }
            )
    images.flush()
    masks.flush()
    meta = StoreMeta(
        dataset="landcoverai",
        tile_size=tile_size,
        class_names=LANDCOVERAI_CLASS_NAMES,
        label_fractions=tuple(sorted(label_fractions, reverse=True)),
    )
    index = store.add_label_fractions(
        pd.DataFrame(rows), len(LANDCOVERAI_CLASS_NAMES), None, meta.label_fractions, 0
    )
    store.write_index(out, index, meta)
    return out
