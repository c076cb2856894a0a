"""The skeleton both training stages share: the tracked run, the job, the curve, the end.

A job runs in this process, or as DDP ranks through torchrun reading the job's JSON file.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Params, params_to_yaml
from pipeline.errors import PipelineError
from pipeline.files import atomic_write
from pipeline.flows.common import tracked_run
from pipeline.train.jobs import RESULT_FILE


def launch_ranks(job_file: Path, processes: int) -> None:
    """Run a training job as ``processes`` DDP ranks through torchrun; output streams through."""
    from pipeline.train import launch  # what each rank runs (and a code dep of the stage)

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        launch.__name__,
        str(job_file),
    ]
    print(f"launching {processes} DDP processes: {' '.join(command[1:])}")
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise PipelineError(
            f"torchrun exited with {completed.returncode}; the ranks' errors are above "
            f"(job {job_file})"
        )


def run_job(job: Any, processes: int, work: Path) -> dict[str, Any]:
    """A training job's result: in this process, or as ``processes`` DDP ranks via torchrun
    (the main rank writes the result file, read back here)."""
    if processes == 1:
        result: dict[str, Any] = job.run()
    else:
        launch_ranks(job.write(work / "job.json"), processes)
        result = json.loads((job.out_dir / RESULT_FILE).read_text())
    (job.out_dir / RESULT_FILE).unlink(missing_ok=True)
    return result


# What differs between runs of the same inputs by design: the MLflow run keeps it, so that the
# DVC-tracked outputs are the same bytes wherever and however often a stage runs.
RUN_FACTS = ("seconds", "images_per_second", "peak_memory_mb", "processes")


def log_summary(metrics: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """The stage's single values, off the metrics tab (which keeps the curves): its metrics as
    tags ``summary.<key>``, the job's speed, memory and processes as ``run.<key>``, both in the
    artifact ``summary.json``; and the step it resumed from, if any."""
    import mlflow

    from pipeline import tracking
    from pipeline.flows.common import json_safe

    facts = {key: float(result[key]) for key in RUN_FACTS if key in result}
    mlflow.set_tags(tracking.summary_tags(metrics) | tracking.summary_tags(facts, "run."))
    mlflow.log_dict(json_safe({**metrics, "run": facts}), tracking.SUMMARY_FILE)
    if result.get("resumed_from") is not None:
        mlflow.set_tag("sop.resumed_from_step", str(result["resumed_from"]))
        print(f"resumed from step {result['resumed_from']} (the newest readable checkpoint)")


def write_curve(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch metrics as a CSV (a DVC plot): a column per metric, in the history's order."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({**row, "epoch": int(row["epoch"])})


@dataclass(frozen=True)
class TrainingStage:
    """Where one training stage's run goes: its MLflow run, checkpoints, outputs and curve."""

    stage: str  # pretrain or finetune
    identity: dict[str, Any]  # names and tags the MLflow run (tracking.run_label)
    section: dict[str, Any]  # the params the stage reads, as DVC declares them
    index_sha256: str
    checkpoints: Path
    out: Path
    curve: Path


def run_training_stage(
    stage: TrainingStage,
    params: Params,
    root: Path,
    processes: int,
    job_for: Callable[[str, str], Any],
    outputs: Callable[[dict[str, Any]], tuple[dict[str, Any], list[Path]]],
) -> dict[str, Any]:
    """The skeleton both training flows share: the folders, the tracked run, the job (here, or
    as torchrun ranks), the curve, the run's summary, the checkpoints' end. ``job_for(tracking_uri,
    run_id)`` builds the job, which carries ``params``; ``outputs(result)`` writes the stage's
    own files and returns its metrics and the files to log as artifacts."""
    stage.checkpoints.mkdir(parents=True, exist_ok=True)
    stage.out.mkdir(parents=True, exist_ok=True)
    with tracked_run(
        stage.stage, params, root, stage.identity, stage.section, stage.index_sha256
    ) as run:
        import mlflow

        # Beside the checkpoints: the params they were trained with, for whoever finds them.
        (stage.checkpoints / "params.resolved.yaml").write_text(params_to_yaml(params))
        job = job_for(mlflow.get_tracking_uri(), run.info.run_id)
        result = run_job(job, processes, stage.checkpoints)
        metrics, artifacts = outputs(result)
        write_curve(stage.curve, result["history"])
        log_summary(metrics, result)
        for artifact in [*artifacts, stage.curve]:
            mlflow.log_artifact(str(artifact))
    finish_checkpoints(stage.checkpoints, keep=params.compute.keep_checkpoints)
    return metrics


def finish_checkpoints(folder: Path, keep: bool) -> None:
    """After a stage's outputs are written: delete its sibling checkpoint folders
    ``<stem>-<other fingerprint>`` (a changed stage never resumes them again), and its own
    unless ``keep`` (``compute.keep_checkpoints``)."""
    stem = folder.name.rsplit("-", 1)[0]
    for other in folder.parent.glob(f"{stem}-*"):
        if other != folder and other.is_dir() and other.name.rsplit("-", 1)[0] == stem:
            shutil.rmtree(other, ignore_errors=True)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
