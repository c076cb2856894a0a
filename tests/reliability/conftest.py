"""Shared by the reliability suite: snapshots that prove nothing earlier was lost, and stage
commands run as a user (or DVC) runs them, each reporting to one Prefect server per module.

Each test carries ``fault``, ``bad_input`` and/or ``resumed`` marks; the README's reliability
counts are those marks' item counts (``test_readme_counts.py`` checks them).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pipeline import layout
from tests.reliability.projects import (
    FINETUNE_ARGS,
    FINETUNE_MODEL,
    PRETRAIN_ARGS,
    copy_project,
    finetune_outputs,
    pretrain_outputs,
    project,
    resumed_from_step,
    set_checkpoint_every,
    store_with_labels,
)

REPO = Path(__file__).resolve().parents[2]


def snapshot(
    root: Path, skip: tuple[str, ...] = (layout.STATE_DIR, "mlruns", "mlflow.db")
) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks by target), keyed by relative path.

    Skipped: the run state (checkpoints, Prefect) and MLflow's store, which every run appends
    to by design."""
    digests: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in skip or not path.is_file():
            continue
        digests[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def assert_intact(before: Mapping[str, str], root: Path) -> None:
    """Every file of an earlier snapshot is still there, byte for byte."""
    after = snapshot(root)
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not lost, f"lost: {lost[:5]}"
    assert not changed, f"changed: {changed[:5]}"


def run_stage(
    root: Path,
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python stages/<script>.py ARGS`` in ``root``, as DVC runs it; output captured."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{script}.py"), *args],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,  # its own process group, as a scheduler starts a job
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error line a failed command printed last; fails if it exited 0 or gave a traceback."""
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors, done.stderr[-3000:]
    return errors[-1]


@pytest.fixture(scope="session")
def stage_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of stage commands: one real Prefect server for the whole suite's stages
    (a temporary one per command would cost seconds each)."""
    from tests.servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("reliability-prefect")) as api:
        yield {"PREFECT_API_URL": api}


def small_disk_available() -> bool:
    """Whether this machine lets an unprivileged test mount a tmpfs in its own namespace."""
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=4k sop-probe /mnt",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


def on_small_disk(
    mount: Path, size_kb: int, script: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a bash ``script`` with a ``size_kb`` tmpfs over ``mount``: a real disk that fills.

    The tmpfs lives in a private mount namespace and vanishes with the script, so the script
    copies out whatever the test inspects; ``grow KB`` (a bash function) enlarges the disk in
    place, as freeing space would.
    """
    prelude = (
        f"set -u; mount -t tmpfs -o size={size_kb}k sop-small '{mount}'; "
        f"grow() {{ mount -o remount,size=$1k '{mount}'; }}; "
    )
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", prelude + script],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


Outputs = Callable[[Path], tuple[dict[str, Any], dict[str, str]]]


class Stage:
    """One training stage's base project and its uninterrupted run (the reference that
    interrupted, resumed and repeated runs must match)."""

    def __init__(
        self, name: str, args: tuple[str, ...], base: Path, outputs: Outputs, env: dict[str, str]
    ) -> None:
        self.name, self.args, self.base, self.outputs, self.env = name, args, base, outputs, env
        whole = copy_project(base, base.parent / f"{name}-whole")
        done = run_stage(whole, name, *args, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert resumed_from_step(done) is None
        self.expected, self.files = outputs(whole)

    def copy(self, tmp: Path) -> Path:
        return copy_project(self.base, tmp / "project")

    def run(self, root: Path, failpoint: str | None = None) -> Any:
        env = {**self.env, **({"SOP_FAILPOINTS": failpoint} if failpoint else {})}
        return run_stage(root, self.name, *self.args, env=env)

    def assert_matches_uninterrupted(self, root: Path) -> None:
        figures, files = self.outputs(root)
        assert figures == self.expected
        assert files == self.files  # every output, weights included, bit for bit


@pytest.fixture(scope="session")
def pretrain(
    tmp_path_factory: pytest.TempPathFactory, pretext_store: Path, stage_env: dict[str, str]
) -> Stage:
    base = project(tmp_path_factory.mktemp("pretrain") / "base", pretext_store)
    return Stage("pretrain", PRETRAIN_ARGS, base, pretrain_outputs, stage_env)


@pytest.fixture(scope="session")
def finetune(
    tmp_path_factory: pytest.TempPathFactory, small_store: Path, stage_env: dict[str, str]
) -> Stage:
    folder = tmp_path_factory.mktemp("finetune")
    base = project(folder / "base", store_with_labels(small_store, folder / "store"))
    set_checkpoint_every(base, 2)  # mid-epoch checkpoints at steps 2, 4 and 8 of 9
    done = run_stage(base, "weights", FINETUNE_MODEL, env=stage_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return Stage("finetune", FINETUNE_ARGS, base, finetune_outputs, stage_env)
