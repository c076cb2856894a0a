from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.config import load_params
from pipeline.data.synthetic import write_archive_from_params

REPO = Path(__file__).resolve().parents[1]


def test_demo_md5_pin_matches_what_the_synth_stage_writes(tmp_path: Path) -> None:
    """The demo verifies its archive like a real download: the pin must follow the generator."""
    params = load_params(REPO / "demo" / "params.yaml")
    archive = write_archive_from_params(
        tmp_path / "landcover.ai.v1.zip",
        params.synthetic,
        params.data.tiling_for("landcoverai").tile_size,
    )
    assert archive.md5 == params.data.source("landcoverai").md5


def test_dvc_lock_files_are_not_git_ignored() -> None:
    """DVC refuses to run when git ignores a dvc.lock (what a fresh clone's `make demo` hit)."""
    for lock in ("dvc.lock", "demo/dvc.lock"):
        result = subprocess.run(
            ["git", "check-ignore", "-q", lock], cwd=REPO, check=False, capture_output=True
        )
        assert result.returncode == 1, f"{lock} is git-ignored"
