from __future__ import annotations

import multiprocessing as mp
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.data import store, tiling
from pipeline.data.catalog import LANDCOVERAI, landcoverai_records
from pipeline.data.store import StoreMeta, TileStore
from pipeline.data.tiling import SceneRecord
from pipeline.errors import DataError
from pipeline.synthetic import SyntheticArchive

META = StoreMeta(
    dataset="landcoverai",
    tile_size=512,
    class_names=LANDCOVERAI.class_names,
    class_colors=LANDCOVERAI.class_colors,
    label_fractions=(1.0, 0.5, 0.25),
)


@pytest.fixture(scope="module")
def extracted(small_archive: SyntheticArchive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    with zipfile.ZipFile(small_archive.path) as zf:
        zf.extractall(root)
    return root


def tile_all(records: list[SceneRecord], out: Path, meta: StoreMeta = META) -> None:
    plan = tiling.plan_tiling(records, meta)
    build = tiling.prepare_store(plan, out)
    for scene in build.pending:
        tiling.tile_scene(scene, build.directory, meta)
    tiling.finalize_store(plan, out)


def test_tiles_match_the_scenes_pixel_for_pixel(
    extracted: Path, small_archive: SyntheticArchive, tmp_path: Path
) -> None:
    records = landcoverai_records(extracted)
    tile_all(records, tmp_path / "tiles")
    tiles = TileStore(tmp_path / "tiles")
    expected_ids = sorted(i for ids in small_archive.splits.values() for i in ids)
    assert sorted(tiles.index["tile_id"]) == expected_ids
    for split, ids in small_archive.splits.items():
        assert set(tiles.index.loc[tiles.index["split"] == split, "tile_id"]) == set(ids)
    for row in tiles.index.itertuples():
        with rasterio.open(extracted / "images" / f"{row.scene}.tif") as src:
            window = ((row.y, row.y + 512), (row.x, row.x + 512))
            image = src.read(window=window).transpose(1, 2, 0)
        with rasterio.open(extracted / "masks" / f"{row.scene}.tif") as src:
            mask = src.read(1, window=window)
        assert np.array_equal(tiles.image(row.row), image)
        assert np.array_equal(tiles.mask(row.row), mask)
        hist = [getattr(row, f"hist_{c}") for c in range(5)]
        assert hist == np.bincount(mask.ravel(), minlength=5).tolist()


def test_index_carries_meta_and_nested_subsets(extracted: Path, tmp_path: Path) -> None:
    tile_all(landcoverai_records(extracted), tmp_path / "tiles")
    tiles = TileStore(tmp_path / "tiles")
    assert tiles.meta == META
    train = set(tiles.rows("train"))
    quarter, half, full = (set(tiles.rows("train", f)) for f in (0.25, 0.5, 1.0))
    assert quarter <= half <= full == train
    assert not set(tiles.rows("val", 0.25))
    with pytest.raises(DataError, match=r"no 0\.1 label subset"):
        tiles.rows("train", 0.1)


def _read_in_child(tiles: TileStore, row: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    queue.put(int(tiles.image(row).astype(np.int64).sum()))


def test_store_reads_from_spawned_workers(extracted: Path, tmp_path: Path) -> None:
    tile_all(landcoverai_records(extracted), tmp_path / "tiles")
    tiles = TileStore(tmp_path / "tiles")
    tiles.image(0)  # opened here; the child must open its own memmap
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(tiles, 1, queue))
    child.start()
    child.join(60)
    assert queue.get(timeout=5) == int(tiles.image(1).astype(np.int64).sum())


def test_a_failed_scene_keeps_the_others_and_a_rerun_finishes(
    extracted: Path, tmp_path: Path
) -> None:
    records = landcoverai_records(extracted)
    out = tmp_path / "tiles"
    plan = tiling.plan_tiling(records, META)
    pending = tiling.prepare_store(plan, out).pending
    tiling.tile_scene(pending[0], out, META)
    # A kill or failure here: the first scene's work is on disk, the second's is not.
    assert [s.record.scene for s in tiling.prepare_store(plan, out).pending] == [records[1].scene]
    with pytest.raises(DataError, match="was not tiled"):
        tiling.finalize_store(plan, out)
    for scene in tiling.prepare_store(plan, out).pending:
        tiling.tile_scene(scene, out, META)
    index = tiling.finalize_store(plan, out)
    assert len(index) == plan.n_tiles
    assert tiling.prepare_store(plan, out).pending == []  # finished: nothing left to do


def test_a_changed_plan_is_built_beside_the_old_store_and_replaces_it_when_done(
    extracted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiles"
    records = landcoverai_records(extracted)
    tile_all(records, out)
    old_hash = store.index_hash(out)
    smaller = StoreMeta(**{**META.__dict__, "tile_size": 256})
    plan = tiling.plan_tiling(records, smaller)
    build = tiling.prepare_store(plan, out)
    assert build.directory == tiling.staging_dir(out)
    tiling.tile_scene(build.pending[0], build.directory, smaller)
    # Failed or killed halfway through the retile: the old store is whole and in place.
    assert store.index_hash(out) == old_hash
    assert TileStore(out).meta.tile_size == 512
    resumed = tiling.prepare_store(plan, out)
    assert resumed.directory == build.directory
    assert [s.record.scene for s in resumed.pending] == [records[1].scene]
    tiling.tile_scene(resumed.pending[0], resumed.directory, smaller)
    tiling.finalize_store(plan, out)
    assert TileStore(out).meta.tile_size == 256
    assert TileStore(out).image(0).shape == (256, 256, 3)
    assert not tiling.staging_dir(out).exists()


def write_tif(path: Path, array: np.ndarray) -> Path:
    bands = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=bands.dtype,
        crs="EPSG:2180",
        transform=from_origin(500000, 600000, 0.25, 0.25),
    ) as dst:
        dst.write(bands)
    return path


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (np.zeros((600, 600, 4), np.uint8), np.zeros((600, 600), np.uint8), "expected 3 bands"),
        (np.zeros((600, 600, 3), np.uint16), np.zeros((600, 600), np.uint8), "expected uint8"),
        (np.zeros((600, 600, 3), np.uint8), np.zeros((600, 700), np.uint8), "mask is 700x600"),
    ],
)
def test_bad_scenes_are_named(
    tmp_path: Path, image: np.ndarray, mask: np.ndarray, message: str
) -> None:
    record = SceneRecord(
        "s", write_tif(tmp_path / "s.tif", image), write_tif(tmp_path / "s_m.tif", mask)
    )
    with pytest.raises(DataError, match=message) as info:
        tiling.plan_tiling([record], META)
    assert str(tmp_path) in str(info.value)


def test_mask_values_outside_the_class_set_are_named(tmp_path: Path) -> None:
    mask = np.zeros((600, 600), np.uint8)
    mask[5, 5] = 9
    record = SceneRecord(
        "s",
        write_tif(tmp_path / "s.tif", np.zeros((600, 600, 3), np.uint8)),
        write_tif(tmp_path / "s_m.tif", mask),
    )
    plan = tiling.plan_tiling([record], META)
    (scene,) = tiling.prepare_store(plan, tmp_path / "tiles").pending
    with pytest.raises(DataError, match=r"s_m\.tif: mask values \[9\] are outside"):
        tiling.tile_scene(scene, tmp_path / "tiles", META)


def test_missing_or_empty_split_files_are_named(extracted: Path, tmp_path: Path) -> None:
    broken = tmp_path / "lcai"
    broken.mkdir()
    for name in ("images", "masks"):
        (broken / name).symlink_to(extracted / name)
    (broken / "train.txt").write_text("x_0\n")
    (broken / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val\.txt: split file is empty"):
        landcoverai_records(broken)
    (broken / "val.txt").write_text("x_1\n")
    with pytest.raises(DataError, match=r"test\.txt: split file missing"):
        landcoverai_records(broken)


def test_index_hash_identifies_the_store(extracted: Path, tmp_path: Path) -> None:
    tile_all(landcoverai_records(extracted), tmp_path / "a")
    tile_all(landcoverai_records(extracted), tmp_path / "b")
    assert store.index_hash(tmp_path / "a") == store.index_hash(tmp_path / "b")


def test_four_band_scenes_need_explicit_bands(tmp_path: Path) -> None:
    rgba = np.dstack([np.full((600, 600), v, np.uint8) for v in (10, 20, 30, 255)])
    image, mask = (
        write_tif(tmp_path / "s.tif", rgba),
        write_tif(tmp_path / "m.tif", np.zeros((600, 600), np.uint8)),
    )
    with pytest.raises(DataError, match="expected 3 bands"):
        tiling.plan_tiling([SceneRecord("s", image, mask)], META)
    plan = tiling.plan_tiling([SceneRecord("s", image, mask, bands=(1, 2, 3))], META)
    (scene,) = tiling.prepare_store(plan, tmp_path / "tiles").pending
    tiling.tile_scene(scene, tmp_path / "tiles", META)
    images, _ = store.open_arrays(tmp_path / "tiles")
    assert images[0, 0, 0].tolist() == [10, 20, 30]  # alpha dropped
