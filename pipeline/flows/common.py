"""Prefect conventions shared by the flows."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params, params_to_yaml
from pipeline.errors import PipelineError
from pipeline.files import atomic_write, write_text


@contextmanager
def api_for_subprocesses() -> Iterator[str]:
    """Let spawned task workers report to this process's Prefect API.

    With no ``PREFECT_API_URL``, Prefect runs a temporary server per process, and each worker of a
    process pool would start its own (about 12 s each here). Exporting the running one's URL
    while the pool lives makes the workers join it instead.
    """
    preset = os.environ.get("PREFECT_API_URL")
    if preset:
        yield preset
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


class _NoTracebackForUserErrors(logging.Filter):
    """A PipelineError already says what to fix in one line; its traceback is noise.

    Prefect logs every failed run with the exception's traceback. For errors a user acts on
    (a missing file, a wrong checksum, a bad parameter) keep the message, drop the traceback.
    Anything else keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_error_tracebacks() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())


def tracked_run(
    stage: str,
    params: Params,
    root: Path,
    run_name: str,
    section: Mapping[str, Any],
    tile_index_hash: str | None = None,
) -> AbstractContextManager[Any]:
    """The stage's MLflow run: the params it reads, the resolved file, the project's prefix."""
    return tracking.stage_run(
        stage,
        root=root,
        run_name=run_name,
        params=section,
        resolved_params_yaml=params_to_yaml(params),
        tile_index_hash=tile_index_hash,
        experiment_prefix=params.tracking.experiment_prefix,
    )


def launch_ranks(job_file: Path, processes: int) -> None:
    """Run a training job as ``processes`` DDP ranks through torchrun; output streams through."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "pipeline.train.launch",
        str(job_file),
    ]
    print(f"launching {processes} DDP processes: {' '.join(command[1:])}")
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise PipelineError(
            f"torchrun exited with {completed.returncode}; the ranks' errors are above "
            f"(job {job_file})"
        )


def portable_path(path: Path | None, root: Path) -> str | None:
    """``path`` relative to the pipeline root when inside it (a clone elsewhere writes the same
    bytes, so DVC sees the same output), else absolute."""
    if path is None:
        return None
    resolved, base = Path(path).resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved)


def json_safe(value: Any) -> Any:
    """NaN (a class absent from a set) as null: DVC and browsers reject NaN in JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(json_safe(value), indent=2))


def run_job(job: Any, processes: int, work: Path) -> dict[str, Any]:
    """A training job's result: in this process, or as ``processes`` DDP ranks via torchrun
    (the main rank writes the result file, read back here)."""
    from pipeline.train.jobs import RESULT_FILE

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


def log_run_facts(result: Mapping[str, Any]) -> None:
    """A training job's speed, memory and processes, and the step it resumed from, if any."""
    import mlflow

    mlflow.log_metrics({f"run.{key}": float(result[key]) for key in RUN_FACTS if key in result})
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


def checkpoint_root(root: Path) -> Path:
    """Where every training stage's checkpoint folders live (never a DVC output)."""
    return root / ".sop" / "checkpoints"


@dataclass(frozen=True)
class TrainingStage:
    """Where one training stage's run goes: its MLflow run, checkpoints, outputs and curve."""

    stage: str  # pretrain or finetune
    run_name: str
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
    job_for: Callable[[Path, str, str], Any],
    outputs: Callable[[dict[str, Any]], tuple[dict[str, Any], list[Path]]],
) -> dict[str, Any]:
    """The skeleton both training flows share: the folders, the tracked run, the resolved
    params, the job (here, or as torchrun ranks), the curve, the run's facts, the checkpoints'
    end. ``job_for(params_file, tracking_uri, run_id)`` builds the job; ``outputs(result)``
    writes the stage's own files and returns its metrics and the files to log as artifacts."""
    stage.checkpoints.mkdir(parents=True, exist_ok=True)
    stage.out.mkdir(parents=True, exist_ok=True)
    with tracked_run(
        stage.stage, params, root, stage.run_name, stage.section, stage.index_sha256
    ) as run:
        import mlflow

        params_file = stage.checkpoints / "params.resolved.yaml"
        params_file.write_text(params_to_yaml(params))
        job = job_for(params_file, mlflow.get_tracking_uri(), run.info.run_id)
        result = run_job(job, processes, stage.checkpoints)
        metrics, artifacts = outputs(result)
        write_curve(stage.curve, result["history"])
        mlflow.log_metrics(
            {f"final.{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        )
        log_run_facts(result)
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
