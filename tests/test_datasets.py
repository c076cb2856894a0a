"""Datasets end to end through the public entry points: archives in each official layout, built
by the tests, served from a real HTTP server on 127.0.0.1, downloaded and tiled by the flows."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline import layout
from pipeline.config import params_from_mapping
from pipeline.data.store import TileStore
from pipeline.errors import ChecksumError, DataError, DownloadError
from pipeline.flows.data import download_flow, tile_flow
from tests import archives
from tests.servers import FileServer

pytestmark = pytest.mark.slow


def params(**data: Any) -> Any:
    return params_from_mapping({"data": {"workers": 2, **data}})


@pytest.fixture(scope="module")
def loveda(tmp_path_factory: pytest.TempPathFactory) -> dict[str, archives.BuiltArchive]:
    return archives.loveda_zips(tmp_path_factory.mktemp("loveda"), size=1024, per_domain=1)


@pytest.fixture
def loveda_server(loveda: dict[str, archives.BuiltArchive]) -> Iterator[FileServer]:
    server = FileServer(loveda["Train"].path.parent)
    yield server
    server.close()


def loveda_md5s(loveda: dict[str, archives.BuiltArchive]) -> dict[str, str]:
    return {f"{split}.zip": built.md5 for split, built in loveda.items()}


def test_loveda_from_a_mirror_with_a_dropped_connection_and_a_500(
    loveda: dict[str, archives.BuiltArchive], loveda_server: FileServer, tmp_path: Path
) -> None:
    loveda_server.faults = ["drop", "500"]  # Train.zip breaks mid-file, then the retry gets a 500
    p = params(
        datasets=["loveda"],
        sources={"loveda": {"url": loveda_server.url, "md5": loveda_md5s(loveda)}},
    )
    download_flow("loveda", p, tmp_path)
    train_requests = [r for r in loveda_server.requests if r[0] == "Train.zip"]
    assert train_requests[0][1] is None
    assert train_requests[-1][1] is not None
    assert train_requests[-1][1].startswith("bytes=")
    summary = tile_flow("loveda", p, tmp_path)

    store = TileStore(layout.tiles_dir(tmp_path, "loveda"))
    labelled = {k: v for split in ("Train", "Val") for k, v in loveda[split].masks.items()}
    n_images = len(labelled) + len(loveda["Test"].images)
    assert summary["tiles"] == len(store) == 4 * n_images  # 1024 -> four 512 tiles
    assert summary["tiles_per_split"] == {
        "train": 4 * len(loveda["Train"].masks),
        "val": 4 * len(loveda["Val"].masks),
        "predict": 4 * len(loveda["Test"].images),
    }
    for row in store.index.itertuples():
        split, domain, image_id = None, row.domain.capitalize(), row.scene.split("_", 1)[1]
        for name in ("Train", "Val", "Test"):
            if f"{name}/{domain}/{image_id}" in loveda[name].images:
                split = name
        assert split is not None
        key = f"{split}/{domain}/{image_id}"
        assert row.tile_id == f"{row.domain}_{image_id}_{row.k}"
        window = (slice(row.y, row.y + 512), slice(row.x, row.x + 512))
        assert np.array_equal(store.image(row.row), loveda[split].images[key][window])
        if split == "Test":
            assert not row.labelled
            assert row.split == "predict"
        else:
            assert np.array_equal(store.mask(row.row), loveda[split].masks[key][window])
            assert [getattr(row, f"hist_{c}") for c in range(8)] == np.bincount(
                loveda[split].masks[key][window].ravel(), minlength=8
            ).tolist()
    assert store.meta.ignore_index == 0
    assert store.meta.evaluated_classes == (1, 2, 3, 4, 5, 6, 7)


def test_loveda_checksum_mismatch_sets_the_archive_aside(
    loveda: dict[str, archives.BuiltArchive], loveda_server: FileServer, tmp_path: Path
) -> None:
    md5s = {**loveda_md5s(loveda), "Val.zip": "0" * 32}
    p = params(datasets=["loveda"], sources={"loveda": {"url": loveda_server.url, "md5": md5s}})
    with pytest.raises(ChecksumError, match=r"Val\.zip\.part: md5 .* does not match"):
        download_flow("loveda", p, tmp_path)
    assert (layout.raw_dir(tmp_path, "loveda") / "archives/Val.zip.bad").exists()
    assert not (layout.raw_dir(tmp_path, "loveda") / "archives/Val.zip").exists()
    assert not (layout.raw_dir(tmp_path, "loveda") / "extracted/Val").exists()


def test_offline_names_the_parameter(tmp_path: Path) -> None:
    p = params(
        datasets=["landcoverai"],
        sources={"landcoverai": {"url": "http://127.0.0.1:9/landcover.ai.v1.zip"}},
    )
    with pytest.raises(DownloadError, match=r"Set data\.sources\.landcoverai\.url in params\.yaml"):
        download_flow("landcoverai", p, tmp_path)


def test_zip_slip_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "landcover.ai.v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/ok.tif", b"x")
        zf.writestr("../../escape.txt", b"pwned")
    p = params(
        datasets=["landcoverai"], sources={"landcoverai": {"url": str(archive), "md5": "skip"}}
    )
    with pytest.raises(DataError, match=r"refused member '\.\./\.\./escape\.txt'"):
        download_flow("landcoverai", p, tmp_path / "root")
    assert not list(tmp_path.rglob("escape.txt"))


def test_deepglobe_kaggle_archive_thresholded_and_overlapping(tmp_path: Path) -> None:
    built = archives.deepglobe_kaggle_zip(tmp_path / "src", n_train=2, n_test=1, size=600)
    p = params(datasets=["deepglobe"], sources={"deepglobe": {"url": str(built.path)}})
    with pytest.raises(ChecksumError, match="f32684b0b2bf6f8d604cd359a399c061"):
        download_flow("deepglobe", p, tmp_path)  # named data.zip: the known md5 is checked
    p = params(
        datasets=["deepglobe"], sources={"deepglobe": {"url": str(built.path), "md5": built.md5}}
    )
    download_flow("deepglobe", p, tmp_path)
    summary = tile_flow("deepglobe", p, tmp_path)
    store = TileStore(layout.tiles_dir(tmp_path, "deepglobe"))
    assert len(store) == 4 * len(built.masks)  # 600 at 512 with overlap: x, y in {0, 88}
    assert sorted(set(store.index["y"])) == [0, 88]
    for row in store.index.itertuples():
        window = (slice(row.y, row.y + 512), slice(row.x, row.x + 512))
        assert np.array_equal(store.mask(row.row), built.masks[row.scene][window])
        assert np.array_equal(store.image(row.row), built.images[row.scene][window])
    assert summary["off_palette_px"] > 0  # the red patch, mapped to unknown
    assert set(store.index["split"]) <= {"train", "val", "test"}
    assert store.meta.evaluated_classes == (0, 1, 2, 3, 4, 5)


def test_deepglobe_missing_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        DownloadError, match=r"kaggle\.com/datasets/geoap96.*data\.sources\.deepglobe\.url"
    ):
        download_flow("deepglobe", params(datasets=["deepglobe"]), tmp_path)


def test_deepglobe_balraj_folder_is_used_in_place(tmp_path: Path) -> None:
    built = archives.deepglobe_balraj_folder(tmp_path / "src", n_train=2, size=600)
    p = params(datasets=["deepglobe"], sources={"deepglobe": {"url": str(built.path)}})
    download_flow("deepglobe", p, tmp_path)
    tile_flow("deepglobe", p, tmp_path)
    store = TileStore(layout.tiles_dir(tmp_path, "deepglobe"))
    assert set(store.index["scene"]) == set(built.masks)
    assert not (layout.raw_dir(tmp_path, "deepglobe") / "extracted").exists()  # nothing copied


@pytest.mark.parametrize("fmt", ["tif", "png", "jpg"])
def test_users_labelled_imagery(tmp_path: Path, fmt: str) -> None:
    built = archives.custom_labelled_folder(tmp_path / "mine", n=3, height=700, width=900, fmt=fmt)
    p = params(
        datasets=["mine"],
        custom={
            "mine": {
                "images": str(built.path / "images"),
                "masks": str(built.path / "masks"),
                "classes": str(built.path / "classes.yaml"),
            }
        },
        tiling={"mine": {"tile_size": 256, "remainder": "overlap"}},
    )
    download_flow("mine", p, tmp_path)
    tile_flow("mine", p, tmp_path)
    store = TileStore(layout.tiles_dir(tmp_path, "mine"))
    classes = yaml.safe_load((built.path / "classes.yaml").read_text())
    assert store.meta.class_names == tuple(classes["names"])
    assert store.meta.ignore_index == 255
    assert len(store) == 3 * 3 * 4  # 700 -> y in {0, 256, 444}; 900 -> x in {0, 256, 512, 644}
    for row in store.index.itertuples():
        window = (slice(row.y, row.y + 256), slice(row.x, row.x + 256))
        assert np.array_equal(store.mask(row.row), built.masks[row.scene][window])
        assert np.array_equal(store.image(row.row), built.images[row.scene][window])


def test_users_multispectral_scenes_need_bands_and_scale(tmp_path: Path) -> None:
    built = archives.custom_unlabelled_folder(tmp_path / "s2", n=2, bands=4, dtype="uint16")
    spec: dict[str, Any] = {"images": str(built.path)}
    p = params(datasets=["s2"], custom={"s2": spec})
    download_flow("s2", p, tmp_path)
    with pytest.raises(
        DataError, match=r"expected 3 bands \(RGB\), found 4; set data\.custom\.s2\.bands"
    ):
        tile_flow("s2", p, tmp_path)
    p = params(datasets=["s2"], custom={"s2": {**spec, "bands": [3, 2, 1]}})
    with pytest.raises(
        DataError, match=r"expected uint8 pixels, found uint16; set data\.custom\.s2\.scale"
    ):
        tile_flow("s2", p, tmp_path)
    p = params(
        datasets=["s2"], custom={"s2": {**spec, "bands": [3, 2, 1], "scale": [0.0, 10000.0]}}
    )
    summary = tile_flow("s2", p, tmp_path)
    store = TileStore(layout.tiles_dir(tmp_path, "s2"))
    assert not store.meta.has_masks
    assert summary["tiles_per_split"] == {"pretrain": len(store)}
    first = store.index.iloc[0]
    raw = built.images[first["scene"]][first["y"] : first["y"] + 512, first["x"] : first["x"] + 512]
    expected = np.clip(np.rint(raw[..., [2, 1, 0]].astype(np.float32) * 255 / 10000), 0, 255)
    assert np.array_equal(store.image(int(first["row"])), expected.astype(np.uint8))


def test_a_corrupt_scene_is_named_and_the_others_are_kept(tmp_path: Path) -> None:
    built = archives.custom_labelled_folder(
        tmp_path / "mine", n=3, height=600, width=600, fmt="png"
    )
    victim = sorted((built.path / "images").glob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])  # truncated PNG
    p = params(
        datasets=["mine"],
        workers=1,
        custom={
            "mine": {
                "images": str(built.path / "images"),
                "masks": str(built.path / "masks"),
                "classes": str(built.path / "classes.yaml"),
            }
        },
    )
    download_flow("mine", p, tmp_path)
    with pytest.raises(DataError, match=victim.name):
        tile_flow("mine", p, tmp_path)
    done = sorted(
        p.stem for p in (layout.tiles_dir(tmp_path, "mine") / ".progress").glob("*.parquet")
    )
    assert done == sorted(s for s in built.masks if s != victim.stem)
    shutil.copy(tmp_path / "mine" / "images" / f"{done[0]}.png", victim)  # repaired
    tile_flow("mine", p, tmp_path)
    assert len(TileStore(layout.tiles_dir(tmp_path, "mine"))) == 3
