"""A disk that fills while the tile stage writes its store: a one-line error naming the folder
or file, nothing earlier touched, and after space is freed the same command finishes with the
store an unhindered run writes. The disk is real: a small tmpfs in a private mount namespace.

(Checkpoints on a full disk: ``test_interrupted_training.py``.)
"""

from __future__ import annotations

import hashlib
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.data.store import IMAGES_FILE, MASKS_FILE, index_hash
from pipeline.synthetic import SyntheticArchive
from tests.reliability.conftest import (
    REPO,
    assert_intact,
    on_small_disk,
    one_line_error,
    run_stage,
    small_disk_available,
    snapshot,
)
from tests.reliability.projects import copy_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not small_disk_available(), reason="no unprivileged mount namespaces (unshare)"
    ),
]

PAGE_KB = 4  # tmpfs counts whole pages


@pytest.fixture(scope="module")
def downloaded(
    tmp_path_factory: pytest.TempPathFactory,
    small_archive: SyntheticArchive,
    stage_env: dict[str, str],
) -> Path:
    """A root whose download stage is done (the 2-scene synthetic LandCover.ai archive)."""
    root = tmp_path_factory.mktemp("disk") / "base"
    root.mkdir()
    (root / "params.yaml").write_text(
        f"""seed: 0
data:
  datasets: [landcoverai]
  sources: {{landcoverai: {{url: {small_archive.path}, md5: {small_archive.md5}}}}}
  tiling: {{landcoverai: {{tile_size: 512, remainder: drop}}}}
  label_fractions: [1.0, 0.5]
  workers: 1
tracking: {{experiment_prefix: t}}
"""
    )
    done = run_stage(root, "download", "landcoverai", env=stage_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, downloaded: Path, stage_env: dict[str, str]
) -> Path:
    """The store an unhindered tile stage writes."""
    root = copy_project(downloaded, tmp_path_factory.mktemp("disk") / "reference")
    done = run_stage(root, "tile", "landcoverai", env=stage_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return layout.tiles_dir(root, "landcoverai")


def _pages_kb(path: Path) -> int:
    return math.ceil(path.stat().st_size / (PAGE_KB * 1024)) * PAGE_KB


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.fault
@pytest.mark.resumed
@pytest.mark.parametrize("when", ["before-any-tile", "after-the-arrays"])
def test_a_full_disk_while_tiling_is_named_and_the_rerun_finishes(
    downloaded: Path, reference: Path, stage_env: dict[str, str], tmp_path: Path, when: str
) -> None:
    root = copy_project(downloaded, tmp_path / "project")
    store = layout.tiles_dir(root, "landcoverai")
    tiles = store.parent  # the small disk: the store and its summary beside it
    tiles.mkdir(parents=True)
    before = snapshot(root)
    arrays_kb = _pages_kb(reference / IMAGES_FILE) + _pages_kb(reference / MASKS_FILE)
    # Too small for the store's arrays; or room for them and its plan marker, and nothing after.
    size_kb = 1024 if when == "before-any-tile" else arrays_kb + PAGE_KB
    keep = tmp_path / "kept"
    tile = shlex.join([sys.executable, str(REPO / "stages" / "tile.py"), "landcoverai"])
    done = on_small_disk(
        tiles,
        size_kb,
        f"cd {shlex.quote(str(root))}; {tile} 2> {keep}.err1; echo $? > {keep}.rc1; "
        f"grow 65536; {tile} 2> {keep}.err2; echo $? > {keep}.rc2; "
        f"cp -a {shlex.quote(str(tiles))}/. {keep}/",
        env=stage_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first = subprocess.CompletedProcess([], int(Path(f"{keep}.rc1").read_text()), "", "")
    first.stderr = Path(f"{keep}.err1").read_text()
    error = one_line_error(first)
    assert str(store) in error
    if when == "before-any-tile":
        assert "no space left for the tile store" in error
    else:  # the arrays fitted; the first scene's index rows did not
        assert ".progress" in error
        assert "no space left on device" in error
    assert_intact(before, root)  # the raw data and extraction, untouched

    assert Path(f"{keep}.rc2").read_text().strip() == "0", Path(f"{keep}.err2").read_text()
    kept = keep / store.relative_to(tiles)
    assert index_hash(kept) == index_hash(reference)
    for name in (IMAGES_FILE, MASKS_FILE):
        assert _digest(kept / name) == _digest(reference / name)
