"""Synthetic LandCover.ai archive: official tile numbering, layout, georeferencing, determinism."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from pipeline.data.tiling import official_tile_grid
from pipeline.synthetic import (
    LANDCOVERAI_CLASS_NAMES,
    SPLIT_NAMES,
    SyntheticArchive,
    synth_scene,
    write_landcoverai_archive,
)

# Small enough to be quick, big enough (>= 2 x 512 after the -15 % size jitter) that every
# scene has several full tiles and every split gets some.
N_SCENES, HEIGHT, WIDTH, TILE = 2, 1250, 1350, 512
SEED = 11


def _write(out: Path, seed: int) -> SyntheticArchive:
    return write_landcoverai_archive(
        out, n_scenes=N_SCENES, height=HEIGHT, width=WIDTH, tile_size=TILE, seed=seed
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> SyntheticArchive:
    return _write(tmp_path_factory.mktemp("synthetic") / "landcover.ai.v1.zip", SEED)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return synth_scene(1200, 1300, np.random.default_rng(5))


def _zip_url(archive: SyntheticArchive, member: str) -> str:
    return f"zip://{archive.path.resolve()}!/{member}"


# --- official_tile_grid ------------------------------------------------------------------


def test_tile_grid_counts_partial_positions() -> None:
    # 3 x 3 grid positions; the last row and column are partial, so ids 2, 5, 6, 7, 8 are gaps.
    assert official_tile_grid(1100, 1300, 512) == [
        (0, 0, 0),
        (1, 0, 512),
        (3, 512, 0),
        (4, 512, 512),
    ]


def test_tile_grid_exact_multiples_have_no_gaps() -> None:
    assert official_tile_grid(1024, 1536, 512) == [
        (0, 0, 0),
        (1, 0, 512),
        (2, 0, 1024),
        (3, 512, 0),
        (4, 512, 512),
        (5, 512, 1024),
    ]
    assert official_tile_grid(512, 512, 512) == [(0, 0, 0)]


@pytest.mark.parametrize(("height", "width"), [(511, 2000), (2000, 511), (100, 100), (0, 0)])
def test_tile_grid_smaller_than_a_tile_is_empty(height: int, width: int) -> None:
    assert official_tile_grid(height, width, 512) == []


def test_tile_grid_partial_row_still_advances_counter() -> None:
    # One full row of 2 tiles and a partial third column: ids 0 and 1; the partial
    # second row (y = 512, 600 - 512 < 512) yields nothing.
    assert official_tile_grid(600, 1200, 512) == [(0, 0, 0), (1, 0, 512)]
    # Second row starts at k = 3 because the partial (0, 1024) position consumed k = 2.
    assert [k for k, _, _ in official_tile_grid(1030, 1100, 512)] == [0, 1, 3, 4]


@pytest.mark.parametrize(("height", "width"), [(1100, 1300), (1777, 1234), (2048, 1000)])
def test_tile_grid_matches_split_py_slicing(height: int, width: int) -> None:
    # Literal transcription of the official split.py loop on an array of the scene's size.
    img = np.zeros((height, width), np.uint8)
    expected = []
    k = 0
    for y in range(0, img.shape[0], 512):
        for x in range(0, img.shape[1], 512):
            if img[y : y + 512, x : x + 512].shape == (512, 512):
                expected.append((k, y, x))
            k += 1
    assert official_tile_grid(height, width, 512) == expected


def test_tile_grid_rejects_bad_tile_size() -> None:
    with pytest.raises(ValueError, match="tile_size"):
        official_tile_grid(1000, 1000, 0)


# --- archive layout ----------------------------------------------------------------------


def test_archive_members_at_zip_root(archive: SyntheticArchive) -> None:
    with zipfile.ZipFile(archive.path) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    expected = {f"{d}/{s.name}.tif" for s in archive.scenes for d in ("images", "masks")}
    expected |= {f"{split}.txt" for split in SPLIT_NAMES}
    assert set(names) == expected
    assert names == sorted(names)
    assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in infos)
    assert len({s.name for s in archive.scenes}) == N_SCENES


def test_split_files_cover_exactly_the_full_tiles(archive: SyntheticArchive) -> None:
    expected: set[str] = set()
    for spec in archive.scenes:
        with rasterio.open(_zip_url(archive, f"images/{spec.name}.tif")) as src:
            assert (src.height, src.width) == (spec.height, spec.width)
        expected |= {
            f"{spec.name}_{k}" for k, _, _ in official_tile_grid(spec.height, spec.width, 512)
        }

    with zipfile.ZipFile(archive.path) as zf:
        files = {s: zf.read(f"{s}.txt").decode().splitlines() for s in SPLIT_NAMES}
    assert files == archive.splits
    seen: set[str] = set()
    for split, ids in files.items():
        assert ids, f"{split} is empty"
        assert ids == sorted(ids, key=lambda t: (t.rsplit("_", 1)[0], int(t.rsplit("_", 1)[1])))
        assert seen.isdisjoint(ids)
        seen |= set(ids)
    assert seen == expected


def test_scene_sizes_vary_and_are_at_least_a_tile(archive: SyntheticArchive) -> None:
    sizes = {(s.height, s.width) for s in archive.scenes}
    assert len(sizes) == len(archive.scenes)
    for h, w in sizes:
        assert h >= 512
        assert w >= 512
        assert abs(h - HEIGHT) <= 0.15 * HEIGHT + 1
        assert abs(w - WIDTH) <= 0.15 * WIDTH + 1


def test_few_tiles_still_fill_every_split(tmp_path: Path) -> None:
    # 4 tiles of 256 and a fraction of 0 for val and test: each split still gets one.
    result = write_landcoverai_archive(
        tmp_path / "a.zip",
        n_scenes=1,
        height=600,
        width=600,
        tile_size=256,
        split_fractions=(1.0, 0.0, 0.0),
        seed=1,
    )
    assert all(result.splits[s] for s in SPLIT_NAMES)
    assert sum(len(v) for v in result.splits.values()) == len(
        official_tile_grid(result.scenes[0].height, result.scenes[0].width, 256)
    )


@pytest.mark.parametrize(
    ("n_scenes", "height", "fractions", "match"),
    [
        (0, 1600, (0.7, 0.15, 0.15), "n_scenes"),
        (1, 400, (0.7, 0.15, 0.15), "at least one tile"),
        (1, 1600, (0.5, 0.2, 0.2), "sum to 1"),
        (1, 1600, (1.2, -0.1, -0.1), "non-negative"),
    ],
)
def test_bad_arguments_are_rejected(
    tmp_path: Path,
    n_scenes: int,
    height: int,
    fractions: tuple[float, float, float],
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        write_landcoverai_archive(
            tmp_path / "x.zip", n_scenes=n_scenes, height=height, split_fractions=fractions
        )
    assert not list(tmp_path.iterdir())


# --- GeoTIFFs ----------------------------------------------------------------------------


def test_geotiffs_are_georeferenced_like_landcoverai(archive: SyntheticArchive) -> None:
    for spec in archive.scenes:
        with rasterio.open(_zip_url(archive, f"images/{spec.name}.tif")) as img:
            assert img.driver == "GTiff"
            assert img.crs.to_epsg() == 2180
            assert img.count == 3
            assert img.dtypes == ("uint8",) * 3
            t = img.transform
            assert (t.a, t.b, t.d, t.e) == (0.25, 0.0, 0.0, -0.25)
            assert 400_000 <= t.c <= 700_000
            assert 300_000 <= t.f <= 800_000
            assert img.block_shapes[0] == (256, 256)
            assert img.compression is not None
            assert img.compression.value.lower() == "deflate"
            pixels = img.read()
            shape, transform = img.shape, img.transform
        with rasterio.open(_zip_url(archive, f"masks/{spec.name}.tif")) as msk:
            assert msk.count == 1
            assert msk.dtypes == ("uint8",)
            assert msk.crs.to_epsg() == 2180
            assert msk.shape == shape
            assert msk.transform == transform
            mask = msk.read(1)
        assert pixels.std() > 10  # a picture, not a blank
        assert set(np.unique(mask)) == set(range(len(LANDCOVERAI_CLASS_NAMES)))


def test_windowed_read_of_one_tile(archive: SyntheticArchive) -> None:
    spec = archive.scenes[0]
    _, y, x = official_tile_grid(spec.height, spec.width, 512)[-1]
    window = Window(x, y, 512, 512)
    with rasterio.open(_zip_url(archive, f"masks/{spec.name}.tif")) as msk:
        tile = msk.read(1, window=window)
        full = msk.read(1)
    assert tile.shape == (512, 512)
    assert np.array_equal(tile, full[y : y + 512, x : x + 512])


def test_class_pixel_counts_match_masks(archive: SyntheticArchive) -> None:
    counts = np.zeros(len(LANDCOVERAI_CLASS_NAMES), np.int64)
    for spec in archive.scenes:
        with rasterio.open(_zip_url(archive, f"masks/{spec.name}.tif")) as msk:
            counts += np.bincount(msk.read(1).ravel(), minlength=len(counts))
    assert archive.class_pixel_counts == dict(
        zip(LANDCOVERAI_CLASS_NAMES, counts.tolist(), strict=True)
    )


# --- determinism and atomic write --------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(
    archive: SyntheticArchive, tmp_path: Path
) -> None:
    assert archive.md5 == hashlib.md5(archive.path.read_bytes()).hexdigest()
    again = _write(tmp_path / "again.zip", SEED)
    assert again.md5 == archive.md5
    assert again.splits == archive.splits
    assert again.scenes == archive.scenes
    other = _write(tmp_path / "other.zip", SEED + 1)
    assert other.md5 != archive.md5


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "landcover.ai.v1.zip"

    def write(seed: int) -> SyntheticArchive:
        return write_landcoverai_archive(
            out, n_scenes=1, height=600, width=600, tile_size=256, seed=seed
        )

    first = write(1)
    second = write(2)
    assert first.md5 != second.md5
    assert second.md5 == hashlib.md5(out.read_bytes()).hexdigest()
    # Only the archive itself: no temp file left beside it.
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_synth_scene_is_seeded() -> None:
    a_img, a_mask = synth_scene(300, 400, np.random.default_rng(3))
    b_img, b_mask = synth_scene(300, 400, np.random.default_rng(3))
    c_img, _ = synth_scene(300, 400, np.random.default_rng(4))
    assert a_img.shape == (300, 400, 3)
    assert a_img.dtype == np.uint8
    assert a_mask.shape == (300, 400)
    assert a_mask.dtype == np.uint8
    assert np.array_equal(a_img, b_img)
    assert np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_synth_scene_rejects_empty_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        synth_scene(0, 10, np.random.default_rng(0))


# --- class structure ---------------------------------------------------------------------


def _class_stats(image: np.ndarray, mask: np.ndarray, cls: int) -> tuple[float, float, float]:
    """(mean brightness, mean blue share of r+g+b, mean saturation) of one class."""
    px = image[mask == cls].astype(np.float64)
    assert len(px) > 100, f"class {cls} nearly absent"
    total = px.sum(axis=1) + 1e-6
    sat = (px.max(axis=1) - px.min(axis=1)) / (px.max(axis=1) + 1e-6)
    return float(px.mean()), float((px[:, 2] / total).mean()), float(sat.mean())


def test_all_classes_in_a_default_size_scene() -> None:
    _, mask = synth_scene(1600, 1700, np.random.default_rng(0))
    counts = np.bincount(mask.ravel(), minlength=5)
    assert counts.size == 5
    assert (counts > 0).all()
    # Background (fields) dominates, as in LandCover.ai.
    assert counts[0] == counts.max()


def test_water_darker_and_bluer_than_fields(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = scene
    field_l, field_b, _ = _class_stats(image, mask, 0)
    water_l, water_b, _ = _class_stats(image, mask, 3)
    assert water_l < 0.7 * field_l
    assert water_b > field_b


def test_roads_greyer_than_fields(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = scene
    _, _, field_sat = _class_stats(image, mask, 0)
    _, _, road_sat = _class_stats(image, mask, 4)
    assert road_sat < 0.6 * field_sat


def test_woodland_darker_than_fields(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = scene
    field_l, _, _ = _class_stats(image, mask, 0)
    wood_l, _, _ = _class_stats(image, mask, 2)
    assert wood_l < 0.8 * field_l
    wood = image[mask == 2].astype(np.float64).mean(axis=0)
    assert wood[1] > wood[0]
    assert wood[1] > wood[2]


def test_buildings_are_compact_blobs_near_roads(scene: tuple[np.ndarray, np.ndarray]) -> None:
    import cv2

    _, mask = scene
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8))
    areas = stats[1:, cv2.CC_STAT_AREA]
    assert n > 1
    # 0.25 m pixels: houses and barns are tens to a few hundred square metres.
    assert np.median(areas) < 15_000
    road = cv2.dilate((mask == 4).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=1)
    dist = cv2.distanceTransform((1 - road).astype(np.uint8), cv2.DIST_L2, 3)
    assert np.median(dist[mask == 1]) < 200


def test_a_painted_store_holds_the_tiles_the_archive_path_cuts(tmp_path: Path) -> None:
    """Without GeoTIFFs or GDAL, the same tiles, masks, ids and splits as archive -> tiling."""
    from pipeline.data.store import TileStore
    from pipeline.synthetic import painted_tile_store, synthetic_tile_store

    sizes = {"n_scenes": 2, "height": 1100, "width": 1200, "seed": 5}
    cut = TileStore(synthetic_tile_store(tmp_path / "cut", **sizes))
    painted = TileStore(painted_tile_store(tmp_path / "painted", **sizes))
    by_id = {tile: row for row, tile in enumerate(cut.index["tile_id"])}
    assert sorted(by_id) == sorted(painted.index["tile_id"])
    for row, tile in enumerate(painted.index["tile_id"]):
        assert np.array_equal(painted.image(row), cut.image(by_id[tile])), tile
        assert np.array_equal(painted.mask(row), cut.mask(by_id[tile])), tile
    merged = painted.index.merge(cut.index, on="tile_id", suffixes=("", "_cut"))
    assert (merged["split"] == merged["split_cut"]).all()
    assert painted.meta.label_fractions == (1.0, 0.5, 0.25)
    assert painted.index["in_frac_0.25"].sum() <= painted.index["in_frac_0.5"].sum()
