"""Malicious and broken inputs, met as a user meets them: the real stage commands
(``python stages/<stage>.py <dataset>``) in a project folder with its own params.yaml.

Each case must end in one ``error:`` line that names the offending file (or params key), with a
non-zero exit, and leave every file the project held before the command byte for byte as it
was. Each case's project is a copy of one base project that already holds earlier outputs: a
good LandCover.ai archive downloaded, extracted and tiled, and the download manifests of the
user datasets whose tile stage is tested. The bad inputs lie outside the project, where a
user's downloads and imagery do.

A stage command is mostly interpreter start-up and imports, so the cases' commands run two at
a time in the background, each in its own project copy; each test waits for its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
import rasterio
import yaml
from PIL import Image
from rasterio.transform import Affine

from pipeline import layout
from pipeline.synthetic import write_landcoverai_archive
from tests import archives
from tests.reliability.conftest import assert_intact, one_line_error, run_stage, snapshot

pytestmark = pytest.mark.slow

ARCHIVE = "landcover.ai.v1.zip"
HERE = Path()  # the layout's paths relative to a project root, as snapshots key them
EXTRACTED = layout.raw_dir(HERE, "landcoverai") / "extracted" / "landcover.ai.v1"
LANDCOVERAI_TILE = 256
USER_TILE = 128
CONCURRENT_COMMANDS = 2
# A failed stage still records its failed MLflow run: by design, not damage to earlier outputs.
SNAPSHOT_SKIP = (layout.STATE_DIR, "mlruns", "mlflow.db", "mlartifacts")

# (good archive, bad archive to write) -> what the error must name besides the archive's path.
ArchiveWriter = Callable[[Path, Path], tuple[str, ...]]
# A user dataset's folder (images/, masks/, classes.yaml) -> the file it broke.
Breaker = Callable[[Path], Path]
ParamsEdit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Case:
    """One bad input and the stage command that meets it.

    ``archive``: a landcover.ai.v1.zip the download stage is pointed at (its own md5 pinned, so
    only the extraction's checks stand between it and the disk). ``breaker``: a user dataset
    (``data.custom``) with one broken file; for a tile case its download stage already ran
    (it reads no pixels). ``params``: an edit to params.yaml after the earlier outputs were
    made. ``names``: more strings the error line must hold (params keys, members, problems).
    """

    id: str
    stage: Literal["download", "tile"]
    archive: ArchiveWriter | None = None
    breaker: Breaker | None = None
    fmt: str = "png"  # the user dataset's image format
    params: ParamsEdit | None = None
    names: tuple[str, ...] = ()

    @property
    def dataset(self) -> str:
        return "landcoverai" if self.breaker is None else self.id.replace("-", "_")


# ---------------------------------------------------------------------------------------------
# Bad archives, written from the good one.


def _copy_members(good: Path, zf: zipfile.ZipFile) -> None:
    with zipfile.ZipFile(good) as src:
        for info in src.infolist():
            zf.writestr(info, src.read(info))


def _with_member(
    member: str | Callable[[Path], str], data: bytes, *, link: bool = False
) -> ArchiveWriter:
    """The official layout plus one hostile member (``member`` may depend on where the archive
    lies: an absolute path that would land beside it)."""

    def write(good: Path, bad: Path) -> tuple[str, ...]:
        name = member if isinstance(member, str) else member(bad)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if link:
            info.create_system = 3  # unix: the file type is read from the mode's high bits
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
            _copy_members(good, zf)
            zf.writestr(info, data)
        return (repr(name),)

    return write


def _truncated(good: Path, bad: Path) -> tuple[str, ...]:
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a copy cut short
    return ("corrupt or truncated",)


def _corrupt_member(good: Path, bad: Path) -> tuple[str, ...]:
    """Damages the deflated train.txt's bytes; the zip's directory stays readable."""
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("train.txt")
    # The local header is 30 bytes, then the name and extra field, then the compressed data.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 2, start + min(info.compress_size, 200)):
        data[i] ^= 0x5A
    bad.write_bytes(bytes(data))
    return ("'train.txt'", "corrupt")


def _oversized(good: Path, bad: Path) -> tuple[str, ...]:
    """No bomb: incompressible bytes, just more than data.download.max_unpacked_gb allows."""
    with zipfile.ZipFile(bad, "w") as zf:
        _copy_members(good, zf)
        zf.writestr("images/extra.bin", np.random.default_rng(0).bytes(3_000_000))
    return ("data.download.max_unpacked_gb",)


# ---------------------------------------------------------------------------------------------
# A user's labelled imagery, broken in one way.


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _write_tif(path: Path, bands: npt.NDArray[np.uint8], compress: str | None = None) -> Path:
    """A (count, H, W) uint8 GeoTIFF, 1 m pixels in UTM 33N as the user datasets' scenes."""
    count, height, width = bands.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": "uint8",
        "crs": archives.CUSTOM_CRS,
        "transform": Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 5_500_000.0),
    }
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


def _mask_of(folder: Path, scene: str = "scene_01") -> npt.NDArray[np.uint8]:
    with Image.open(folder / "masks" / f"{scene}.png") as image:
        return np.asarray(image).copy()


def _truncated_image(folder: Path) -> Path:
    return _truncate(next((folder / "images").glob("scene_01.*")))


def _truncated_tiff_mask(folder: Path) -> Path:
    """The mask as a compressed GeoTIFF cut short: its header still reads, its pixels do not."""
    png = folder / "masks" / "scene_01.png"
    tif = _write_tif(png.with_suffix(".tif"), _mask_of(folder)[None], compress="deflate")
    png.unlink()
    return _truncate(tif)


def _narrower_mask(folder: Path) -> Path:
    path = folder / "masks" / "scene_01.png"
    Image.fromarray(_mask_of(folder)[:, :-20]).save(path)
    return path


def _four_bands(folder: Path) -> Path:
    path = folder / "images" / "scene_01.tif"
    with rasterio.open(path) as src:
        rgb = src.read()
    path.unlink()
    alpha = np.full((1, *rgb.shape[1:]), 255, np.uint8)
    return _write_tif(path, np.concatenate([rgb, alpha]))


def _class_outside_the_set(folder: Path) -> Path:
    path = folder / "masks" / "scene_01.png"
    mask = _mask_of(folder)
    mask[40:60, 40:60] = 7  # classes.yaml has classes 0..2 and ignore index 255
    Image.fromarray(mask).save(path)
    return path


def _split_files(folder: Path, **texts: str) -> None:
    for split, text in texts.items():
        (folder / "images" / f"{split}.txt").write_text(text)


def _empty_split_file(folder: Path) -> Path:
    _split_files(folder, train="scene_00\n", val="\n", test="scene_01\n")
    return folder / "images" / "val.txt"


def _missing_split_file(folder: Path) -> Path:
    _split_files(folder, train="scene_00\n", val="scene_01\n")
    return folder / "images" / "test.txt"


def _two_colours_for_three_classes(folder: Path) -> Path:
    path = folder / "classes.yaml"
    path.write_text("names: [background, crop, water]\ncolors: [[0, 0, 0], [255, 200, 0]]\n")
    return path


# ---------------------------------------------------------------------------------------------
# params.yaml edits.


def _setting(dotted: str, value: Any) -> ParamsEdit:
    def edit(tree: dict[str, Any]) -> None:
        *sections, key = dotted.split(".")
        for section in sections:
            tree = tree.setdefault(section, {})
        tree[key] = value

    return edit


def _params_case(id: str, edit: ParamsEdit, *names: str) -> Case:
    """params.yaml refused on loading: the tile stage of the good dataset meets it first."""
    return Case(id, "tile", params=edit, names=("params.yaml", *names))


CASES = [
    # Archives the download stage must refuse, keeping the earlier extraction.
    Case("zip-slip", "download", archive=_with_member("../../evil.txt", b"x"), names=("escapes",)),
    Case(
        "absolute-path",
        "download",
        archive=_with_member(lambda bad: str(bad.parent / "evil.txt"), b"x"),
        names=("absolute path",),
    ),
    Case(
        "symlink-member",
        "download",
        archive=_with_member("images/link.tif", b"/etc/passwd", link=True),
        names=("symbolic link",),
    ),
    Case(
        "zip-bomb",
        "download",
        archive=_with_member("images/zeros.tif", bytes(50_000_000)),  # deflates ~1000:1
        names=("zip bomb",),
    ),
    Case("truncated-zip", "download", archive=_truncated),
    Case("corrupt-zip-member", "download", archive=_corrupt_member),
    Case(
        "oversized-archive",
        "download",
        archive=_oversized,
        params=_setting("data.download.max_unpacked_gb", 0.002),
    ),
    # A user's imagery, read in place by the tile stage.
    Case("corrupt-tiff", "tile", breaker=_truncated_image, fmt="tif"),
    Case("corrupt-tiff-mask", "tile", breaker=_truncated_tiff_mask, fmt="tif"),
    Case("corrupt-png", "tile", breaker=_truncated_image),
    Case("corrupt-jpeg", "tile", breaker=_truncated_image, fmt="jpg"),
    Case("size-mismatch", "tile", breaker=_narrower_mask),
    Case(
        "wrong-band-count",
        "tile",
        breaker=_four_bands,
        fmt="tif",
        names=("data.custom.wrong_band_count.bands",),
    ),
    Case("mask-values-outside-classes", "tile", breaker=_class_outside_the_set),
    Case("empty-split-file", "tile", breaker=_empty_split_file),
    Case("missing-split-file", "tile", breaker=_missing_split_file),
    Case(
        "invalid-classes-file",
        "download",
        breaker=_two_colours_for_three_classes,
        names=("colors",),
    ),
    # params.yaml edited after the earlier outputs were made.
    _params_case(
        "params-unknown-key",
        _setting("data.tilling", {"landcoverai": {"tile_size": 256}}),
        "data.tilling: unknown key",
    ),
    _params_case("params-wrong-type", _setting("data.workers", "two"), "data.workers"),
    _params_case(
        "params-impossible-value",
        _setting("data.label_fractions", [1.0, 1.5]),
        "data.label_fractions[1]",
    ),
    # Valid on its own, impossible for these scenes: found by the tile stage, before the earlier
    # store of the same dataset is touched.
    Case(
        "tile-larger-than-scenes",
        "tile",
        params=_setting("data.tiling.landcoverai.tile_size", 4096),
        names=("data.tiling.landcoverai.tile_size",),
    ),
]


# ---------------------------------------------------------------------------------------------
# Fixtures


@dataclass(frozen=True)
class Inputs:
    """The good archive and every case's bad input, outside any project."""

    folder: Path
    good_archive: Path
    bad_archives: dict[str, tuple[Path, tuple[str, ...]]]  # case id -> (zip, names)
    broken_files: dict[str, Path]  # case id -> the user dataset's broken file


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    folder = tmp_path_factory.mktemp("inputs")
    good = write_landcoverai_archive(
        folder / "good" / ARCHIVE, n_scenes=2, height=600, width=650, tile_size=LANDCOVERAI_TILE
    ).path
    bad_archives: dict[str, tuple[Path, tuple[str, ...]]] = {}
    broken_files: dict[str, Path] = {}
    for case in CASES:
        if case.archive is not None:
            bad = folder / case.id / ARCHIVE
            bad.parent.mkdir()
            bad_archives[case.id] = (bad, case.archive(good, bad))
        if case.breaker is not None:
            dataset = archives.custom_labelled_folder(
                folder / case.id, n=2, height=300, width=300, fmt=case.fmt
            )
            broken_files[case.id] = case.breaker(dataset.path)
    return Inputs(folder, good, bad_archives, broken_files)


def _read_params(root: Path) -> dict[str, Any]:
    tree: dict[str, Any] = yaml.safe_load((root / "params.yaml").read_text())
    return tree


def _write_params(root: Path, tree: dict[str, Any]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


@pytest.fixture(scope="module")
def base(
    inputs: Inputs, stage_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The good project: LandCover.ai downloaded from a local archive, extracted and tiled, and
    the user datasets of the tile cases through their download stage."""
    root = tmp_path_factory.mktemp("base")
    users = [c for c in CASES if c.breaker is not None]
    custom = {
        c.dataset: {
            "images": str(inputs.folder / c.id / "images"),
            "masks": str(inputs.folder / c.id / "masks"),
            "classes": str(inputs.folder / c.id / "classes.yaml"),
        }
        for c in users
    }
    _write_params(
        root,
        {
            "data": {
                "datasets": ["landcoverai", *custom],
                # Not the official archive: its md5 is pinned to its own.
                "sources": {
                    "landcoverai": {
                        "url": str(inputs.good_archive),
                        "md5": _md5(inputs.good_archive),
                    }
                },
                "custom": custom,
                "tiling": {
                    "landcoverai": {"tile_size": LANDCOVERAI_TILE},
                    **{name: {"tile_size": USER_TILE} for name in custom},
                },
                "download": {"max_unpacked_gb": 1},
                "workers": 1,
            }
        },
    )
    # `sop download` takes several datasets in one process: a stage command each costs seconds.
    downloaded = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "download", "landcoverai"]
        + [c.dataset for c in users if c.stage == "tile"],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1", **stage_env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    tiled = run_stage(root, "tile", "landcoverai", env=stage_env)
    assert tiled.returncode == 0, tiled.stderr[-3000:]
    return root


@dataclass(frozen=True)
class Outcome:
    root: Path  # the case's project
    before: dict[str, str]  # its snapshot just before the command
    expected: tuple[str, ...]  # what the error line must hold
    done: subprocess.CompletedProcess[str]


def _arrange(case: Case, root: Path, inputs: Inputs) -> tuple[str, ...]:
    """Point the project at the case's bad input; return what the error line must hold."""
    tree = _read_params(root)
    expected = case.names
    if case.archive is not None:
        bad, names = inputs.bad_archives[case.id]
        tree["data"]["sources"]["landcoverai"] = {"url": str(bad), "md5": _md5(bad)}
        expected = (str(bad), *names, *expected)
    if case.breaker is not None:
        expected = (str(inputs.broken_files[case.id]), *expected)
    if case.params is not None:
        case.params(tree)
    _write_params(root, tree)
    return expected


def _run_case(
    case: Case, base: Path, inputs: Inputs, stage_env: dict[str, str], folder: Path
) -> Outcome:
    root = folder / "project"
    shutil.copytree(base, root, symlinks=True)
    expected = _arrange(case, root, inputs)
    before = snapshot(root, skip=SNAPSHOT_SKIP)
    return Outcome(root, before, expected, run_stage(root, case.stage, case.dataset, env=stage_env))


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest,
    base: Path,
    inputs: Inputs,
    stage_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[Outcome]]]:
    """Each selected case's command, started in the background in its own project copy."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.path == Path(__file__) and hasattr(item, "callspec")
    }
    with ThreadPoolExecutor(CONCURRENT_COMMANDS) as pool:
        yield {
            case.id: pool.submit(
                _run_case, case, base, inputs, stage_env, tmp_path_factory.mktemp(case.id)
            )
            for case in CASES
            if case.id in selected
        }


@pytest.mark.bad_input
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_fails_in_one_line_and_keeps_earlier_outputs(
    case: Case, outcomes: dict[str, Future[Outcome]], inputs: Inputs
) -> None:
    outcome = outcomes[case.id].result()
    # The earlier outputs were there: an extraction, a tile store, each with its marker.
    assert str(EXTRACTED / ".extracted") in outcome.before
    assert str(layout.tiles_dir(HERE, "landcoverai") / "index.parquet") in outcome.before

    line = one_line_error(outcome.done)

    for text in outcome.expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert_intact(outcome.before, outcome.root)
    # No half-extracted copy is left behind, and nothing was written outside the project.
    assert not list(outcome.root.glob(f"{layout.raw_dir(HERE, '*')}/extracted/*.extracting"))
    assert not [p for p in outcome.root.rglob("*") if p.is_symlink()]
    assert not list(inputs.folder.rglob("evil.txt"))
    assert not list(outcome.root.parent.rglob("evil.txt"))
