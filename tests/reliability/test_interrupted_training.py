"""Pretraining and fine-tuning killed (SIGKILL) at three points each, a torn and a corrupt
checkpoint, a disk that fills while checkpointing: every rerun resumes from the newest good
checkpoint and ends with the figures, and the weights, of an uninterrupted run (CPU, same seed).

The kills are real: ``SOP_FAILPOINTS`` (``pipeline/faults.py``) makes the stage's process group
SIGKILL itself at a named point, so the test knows exactly where it died.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import layout
from pipeline.train.engine import load_checkpoint
from tests.reliability.conftest import (
    REPO,
    Stage,
    assert_intact,
    on_small_disk,
    one_line_error,
    small_disk_available,
    snapshot,
)
from tests.reliability.projects import (
    PRETRAIN_ARGS,
    checkpoints_of,
    killed,
    resumed_from_step,
)

pytestmark = pytest.mark.slow

# (failpoint, the step the rerun resumes from). Pretraining writes step checkpoints at steps
# 2 3 4 6 8 9 10 12 and keeps the newest two; fine-tuning writes steps 2 3 4 6 8 9, and best.pt
# before each epoch-end step (always after epoch 1: it is the best so far).
KILLS = [
    pytest.param("pretrain", "train.step@5", 4, id="pretrain-mid-epoch"),
    pytest.param("pretrain", "checkpoint.write@5", 6, id="pretrain-mid-checkpoint-write"),
    pytest.param("pretrain", "outputs.write@1", 12, id="pretrain-after-training"),
    pytest.param("finetune", "train.step@5", 4, id="finetune-mid-epoch"),
    pytest.param("finetune", "checkpoint.write@3", 2, id="finetune-mid-checkpoint-write"),
    pytest.param("finetune", "outputs.write@1", 9, id="finetune-after-training"),
]


@pytest.mark.fault
@pytest.mark.resumed
@pytest.mark.parametrize(("stage_name", "failpoint", "resumed_from"), KILLS)
def test_a_killed_stage_resumes_to_the_uninterrupted_result(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    stage_name: str,
    failpoint: str,
    resumed_from: int,
) -> None:
    stage: Stage = request.getfixturevalue(stage_name)
    root = stage.copy(tmp_path)
    before = snapshot(root)
    first = stage.run(root, failpoint)
    assert killed(first), (first.returncode, first.stderr[-3000:])
    assert_intact(before, root)
    checkpoints = checkpoints_of(root, stage.name)
    torn = list(checkpoints.glob("*.tmp"))
    if failpoint.startswith("checkpoint.write"):
        # Killed between writing the bytes and renaming them into place. The temporary file
        # holds a newer checkpoint than any committed one, and the rerun must not take it;
        # cut to half, it stands for a kill at any byte of the write.
        (partial,) = torn
        uncommitted = torch.load(partial, weights_only=True)["step"]
        assert uncommitted > resumed_from
        partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 2])
    else:
        assert not torn

    second = stage.run(root)
    assert second.returncode == 0, second.stderr[-3000:]
    stage.assert_matches_uninterrupted(root)
    assert resumed_from_step(second) == resumed_from
    assert not checkpoints.exists()  # done: its checkpoints go (keep_checkpoints is off)


@pytest.mark.fault
@pytest.mark.resumed
@pytest.mark.parametrize(
    ("stage_name", "failpoint", "corrupted", "resumed_from"),
    [("pretrain", "train.step@11", 10, 9), ("finetune", "train.step@8", 6, 4)],
    ids=["pretrain", "finetune"],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_with_a_warning(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    stage_name: str,
    failpoint: str,
    corrupted: int,
    resumed_from: int,
) -> None:
    stage: Stage = request.getfixturevalue(stage_name)
    root = stage.copy(tmp_path)
    assert killed(stage.run(root, failpoint))
    newest = checkpoints_of(root, stage_name) / f"step-{corrupted:08d}.pt"
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)  # a bad sector's worth of zeros
    newest.write_bytes(bytes(data))

    second = stage.run(root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{newest}: unreadable checkpoint skipped" in second.stderr
    stage.assert_matches_uninterrupted(root)
    assert resumed_from_step(second) == resumed_from


@pytest.mark.fault
@pytest.mark.resumed
def test_a_disk_that_fills_while_checkpointing_keeps_the_earlier_checkpoints(
    pretrain: Stage, tmp_path: Path
) -> None:
    if not small_disk_available():
        pytest.skip("no unprivileged mount namespaces here (unshare --user --mount)")
    root = pretrain.copy(tmp_path)
    checkpoints = layout.checkpoint_root(root)
    checkpoints.mkdir(parents=True)
    before = snapshot(root)
    keep = tmp_path / "kept"
    stage = shlex.join([sys.executable, str(REPO / "stages" / "pretrain.py"), *PRETRAIN_ARGS])
    # Room for two checkpoints, not three: the third write (step 4) fills the disk. Then the
    # disk grows, as when space is freed, and the same command runs again.
    done = on_small_disk(
        checkpoints,
        CHECKPOINT_KB * 5 // 2,
        f"cd {shlex.quote(str(root))}; {stage} > {keep}.out1 2> {keep}.err1; echo $? > {keep}.rc1; "
        f"cp -a {shlex.quote(str(checkpoints))}/. {keep}/; grow 1048576; "
        f"{stage} > {keep}.out2 2> {keep}.err2; echo $? > {keep}.rc2",
        env=pretrain.env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first_error = Path(f"{keep}.err1").read_text()
    assert Path(f"{keep}.rc1").read_text().strip() == "2", first_error[-3000:]
    error = one_line_error(subprocess.CompletedProcess([], 2, "", first_error))
    assert "step-00000004.pt: no space left on device" in error
    (folder,) = keep.glob("pretrain-*")
    assert sorted(p.name for p in folder.iterdir()) == [
        "params.resolved.yaml",
        "step-00000002.pt",
        "step-00000002.pt.sha256",
        "step-00000003.pt",
        "step-00000003.pt.sha256",
        "step-00000004.pt.sha256",  # written first; harmless without its checkpoint
    ]  # no temporary file left behind, the two earlier checkpoints whole:
    for path in folder.glob("step-*.pt"):
        assert load_checkpoint(path)["step"] == int(path.stem.split("-")[1])
    assert_intact(before, root)

    assert Path(f"{keep}.rc2").read_text().strip() == "0", Path(f"{keep}.err2").read_text()
    pretrain.assert_matches_uninterrupted(root)
    second = subprocess.CompletedProcess(
        [], 0, Path(f"{keep}.out2").read_text(), Path(f"{keep}.err2").read_text()
    )
    assert resumed_from_step(second) == 3


# One pretraining checkpoint of the project above (two ResNet-18s, AdamW's moments, the
# history): 144.1 MB, in KB rounded up. The disk test sizes its disk from it.
CHECKPOINT_KB = 140_800
