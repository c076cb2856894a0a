"""MLflow conventions, used by every stage.

- One experiment per stage kind: ``<prefix>-download``, ``<prefix>-tile``, ``<prefix>-pretrain`` ...
- Run names say the grid cell (``landcoverai-vits14-sop-0.25-s0``) or the dataset.
- Params are flattened with dotted keys (``pretrain.subimage_size``).
- Tags: the git commit and a dirty flag, the DVC stage (DVC sets ``DVC_STAGE`` for its
  commands), the sha256 of the input tile index, and ``mlflow.parentRunId`` when the grid's
  parent run id is in ``SOP_PARENT_RUN_ID``.
- Tracking goes to ``sqlite:///<pipeline root>/mlflow.db`` with artifacts in
  ``<root>/mlartifacts`` unless ``MLFLOW_TRACKING_URI`` points at a shared server.
- The resolved params file is saved with every run as ``params.resolved.yaml``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.env import apply_env_defaults

PARENT_RUN_ENV = "SOP_PARENT_RUN_ID"
TILE_INDEX_TAG = "data.tile_index_sha256"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value's length
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the sqlite file at the pipeline's root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DB_FILE).resolve()}"


def artifact_location(root: Path) -> str | None:
    """Where new experiments keep artifacts: beside the sqlite file, or the server's default."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (root / ARTIFACTS_DIR).resolve().as_uri()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{'a': {'b': 1}, 'c': [1, 2]}`` -> ``{'a.b': '1', 'c': '[1, 2]'}``."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_VALUE]
    return flat


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding ``root``; (None, None) outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # Untracked files (DVC outputs, caches) leave the code clean; edits to tracked ones do not.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def experiment_name(stage: str, prefix: str = "sop") -> str:
    return f"{prefix}-{stage}"


def run_tags(
    root: Path, *, stage: str, tile_index_hash: str | None = None, dvc_stage: str | None = None
) -> dict[str, str]:
    commit, dirty = git_state(root)
    tags = {"sop.stage": stage}
    if commit is not None:
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(dirty).lower()
    dvc_stage = dvc_stage or os.environ.get("DVC_STAGE")
    if dvc_stage:
        tags["dvc.stage"] = dvc_stage
    if tile_index_hash:
        tags[TILE_INDEX_TAG] = tile_index_hash
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    return tags


@contextmanager
def stage_run(
    stage: str,
    *,
    root: Path,
    run_name: str,
    params: Mapping[str, Any],
    resolved_params_yaml: str | None = None,
    tile_index_hash: str | None = None,
    experiment_prefix: str = "sop",
) -> Iterator[Any]:
    """Open the MLflow run of one stage invocation, following the conventions above."""
    apply_env_defaults(root)
    import mlflow
    from mlflow.entities import Param

    # Both before set_tracking_uri, which exports MLFLOW_TRACKING_URI for the whole process:
    # it is restored on exit, or the next run in this process (another root) would inherit it.
    preset = os.environ.get("MLFLOW_TRACKING_URI")
    uri, location = tracking_uri(root), artifact_location(root)
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        name = experiment_name(stage, experiment_prefix)
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(name, artifact_location=location)
        )
        tags = run_tags(root, stage=stage, tile_index_hash=tile_index_hash)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            flat = list(flatten(params).items())
            for start in range(0, len(flat), PARAMS_PER_BATCH):
                batch = [Param(k, v) for k, v in flat[start : start + PARAMS_PER_BATCH]]
                client.log_batch(run.info.run_id, params=batch, synchronous=True)
            if resolved_params_yaml is not None:
                mlflow.log_text(resolved_params_yaml, "params.resolved.yaml")
            yield run
    finally:
        if preset is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = preset
