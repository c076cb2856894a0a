"""MLflow conventions, used by every stage.

- One experiment per stage kind: ``<prefix>-download``, ``<prefix>-tile``, ``<prefix>-pretrain`` ...
  Each is created with the tag ``mlflow.experimentKind=custom_model_development`` (a training
  experiment, not a GenAI one).
- Run names say the stage first, then what tells the run from its siblings, then where it
  belongs (:func:`run_label`): ``finetune sop 0.25 s0 · landcoverai vits14``,
  ``download · landcoverai``. The UI's Run Name column shows the first 20 characters or so.
- A run's identity (stage, dataset, backbone, init, fraction, seed: what it has) is a param and
  a tag ``sop.<key>`` each, never a metric: ``tags.`sop.stage` = 'finetune'`` filters the UI.
- Params are flattened with dotted keys (``pretrain.subimage_size``).
- Metrics are what changes over steps (the training curves) and the evaluate runs' test
  figures; a training run's single values (best epoch, final figures, speed) are tags
  ``summary.<key>`` and the artifact ``summary.json`` (:func:`summary_tags`), so its metrics
  tab opens on its curves.
- Tags: the git commit and a dirty flag, the DVC stage (DVC sets ``DVC_STAGE`` for its
  commands), the sha256 of the input tile index, and ``mlflow.parentRunId`` when the grid's
  parent run id is in ``SOP_PARENT_RUN_ID``.
- Every experiment carries MLflow 3 shared views (:data:`VIEWS`): ``?viewStateShareKey=
  finetune-curves`` lists the fine-tuning runs flat with their identity as columns and charts
  their ``val_miou`` curves, a line per run (:func:`ui_url`).
- Tracking goes to ``sqlite:///<pipeline root>/mlflow.db`` with artifacts in
  ``<root>/mlartifacts`` unless ``MLFLOW_TRACKING_URI`` points at a shared server.
- The resolved params file is saved with every run as ``params.resolved.yaml``.
- A whole ``dvc repro`` (the ``paper`` flow, ``sop repro``) opens one parent run
  (:func:`parent_run`): experiment ``<prefix>``, run name ``repro-<UTC timestamp>``, tags
  ``sop.stage=grid``, the git state and ``dvc.targets``. Its id is exported in
  ``SOP_PARENT_RUN_ID`` while it is open, so every stage process DVC starts tags its run as a
  child and creates it in the parent's experiment, where the MLflow UI nests it under the
  parent. Without ``SOP_PARENT_RUN_ID`` a stage's run goes to its per-stage experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import timing
from pipeline.env import apply_env_defaults
from pipeline.errors import PipelineError

PARENT_RUN_ENV = "SOP_PARENT_RUN_ID"
TILE_INDEX_TAG = "data.tile_index_sha256"
WEIGHTS_TAG = "sop.weights_sha256"
CODE_COMMIT_TAG = "sop.code_commit"  # a fine-tuning run's best weights: evaluate finds it by them
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value's length
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
SQLITE_PREFIX = "sqlite:///"
STAGE_TAG = "sop.stage"
IDENTITY_PREFIX = "sop."
IDENTITY_KEYS = ("dataset", "backbone", "init", "variant", "fraction", "seed")
CONTEXT_KEYS = ("dataset", "backbone")  # where a run belongs: last in its name
SUMMARY_PREFIX = "summary."
SUMMARY_FILE = "summary.json"
# MLflow 3's experiment kinds: this one is "Machine learning" (runs, metrics, models), not
# "GenAI apps & agents" (traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
# The MLflow 3 UI's query parameter for its ML view (it opens in its GenAI view otherwise).
ML_VIEW_QUERY = "workflowType=machine_learning"
# MLflow 3's shared views: the experiment tag ``mlflow.sharedViewState.<key>`` holds a runs page's
# state (filter, columns, grouping, charts) as JSON, and ``?viewStateShareKey=<key>`` opens it.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# key -> (stage, the charts shown): a view per stage a grid compares
VIEWS = {"finetune-curves": ("finetune", "val_miou"), "evaluate-figures": ("evaluate", "test_miou")}


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the sqlite file at the pipeline's root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE_PREFIX}{(root / DB_FILE).resolve()}"


@contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """Held while a process opens a SQLite tracking store: the first opening creates its
    tables, and two processes doing that at once (the stage host warming the store while
    ``sop repro`` opens its parent run) fail. Other stores need no lock."""
    if not uri.startswith(SQLITE_PREFIX):
        yield
        return
    import fcntl

    database = Path(uri.removeprefix(SQLITE_PREFIX))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def open_client(uri: str) -> Any:
    """An ``mlflow.MlflowClient`` for ``uri``. Making one opens the store (creating a new
    SQLite store's tables), so it is made under :func:`store_setup_lock`."""
    import mlflow

    with store_setup_lock(uri):
        return mlflow.MlflowClient(uri)


def artifact_location(root: Path) -> str | None:
    """Where new experiments keep artifacts: beside the sqlite file, or the server's default."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (root / ARTIFACTS_DIR).resolve().as_uri()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{'a': {'b': 1}, 'c': [1, 2], 'd': {}}`` -> ``{'a.b': '1', 'c': '[1, 2]', 'd': '{}'}``
    (an empty mapping is a setting too)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_VALUE]
    return flat


CODE_PATHSPEC = (":(top)", ":(top,exclude,glob)**/dvc.lock")


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding ``root``; (None, None) outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # Untracked files (DVC outputs, caches) leave the code clean, and so do the dvc.lock files
        # (DVC's record of what the outputs are, rewritten as stages run); edits to the code,
        # params or pipeline definition do not.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHSPEC))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def experiment_name(stage: str, prefix: str = "sop") -> str:
    return f"{prefix}-{stage}"


def _shown(key: str, value: Any) -> str:
    if key == "fraction":
        return f"{float(value):g}"
    if key == "seed":
        return f"s{value}"
    return str(value)


def run_label(stage: str, identity: Mapping[str, Any] | None = None) -> str:
    """``finetune sop 0.25 s0 · landcoverai resnet50``: the stage, what tells the run from its
    siblings (in ``identity``'s order), then after a middle dot where it belongs (dataset,
    backbone). The UI cuts names at about 20 characters: the distinguishing part comes first."""
    identity = identity or {}
    detail = [_shown(k, v) for k, v in identity.items() if k not in CONTEXT_KEYS]
    context = [str(identity[k]) for k in CONTEXT_KEYS if k in identity]
    head = " ".join([stage, *detail])
    return f"{head} · {' '.join(context)}" if context else head


def identity_entries(stage: str, identity: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{'sop.stage': 'finetune', 'sop.dataset': 'landcoverai', ...}``: a run's identity, as
    both its params and its tags carry it."""
    entries = {STAGE_TAG: stage}
    for key, value in (identity or {}).items():
        entries[f"{IDENTITY_PREFIX}{key}"] = str(float(value) if key == "fraction" else value)
    return entries


def summary_tags(values: Mapping[str, Any], prefix: str = SUMMARY_PREFIX) -> dict[str, str]:
    """A run's single values (not curves) as tags ``summary.<key>``: shown in the run's overview
    and the runs table, off its metrics tab. Identity keys (params already) and nested values
    (the JSON artifact has them) are left out."""
    return {
        f"{prefix}{key}": str(value)
        for key, value in values.items()
        if key not in IDENTITY_KEYS and (value is None or isinstance(value, str | int | float))
    }


def run_tags(
    root: Path, *, stage: str, tile_index_hash: str | None = None, dvc_stage: str | None = None
) -> dict[str, str]:
    commit, dirty = git_state(root)
    tags = {STAGE_TAG: stage}
    if commit is not None:
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(dirty).lower()
    # The pipeline's own code, wherever the pipeline root is (a user's project may be another
    # repository, or none).
    code_commit, code_dirty = git_state(Path(__file__).resolve().parent)
    if code_commit is not None:
        tags[CODE_COMMIT_TAG] = code_commit
        tags["sop.code_dirty"] = str(code_dirty).lower()
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
    params: Mapping[str, Any],
    identity: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    resolved_params_yaml: str | None = None,
    tile_index_hash: str | None = None,
    experiment_prefix: str = "sop",
) -> Iterator[Any]:
    """Open the MLflow run of one stage invocation, following the conventions above; named by
    :func:`run_label` from ``stage`` and ``identity`` unless ``run_name`` is given."""
    apply_env_defaults(root)
    import mlflow
    from mlflow.entities import Param

    # Both before set_tracking_uri, which exports MLFLOW_TRACKING_URI for the whole process:
    # it is restored on exit, or the next run in this process (another root) would inherit it.
    preset = os.environ.get("MLFLOW_TRACKING_URI")
    uri, location = tracking_uri(root), artifact_location(root)
    try:
        mlflow.set_tracking_uri(uri)
        client = open_client(uri)
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent:
            # The UI nests a child under its parent only within one experiment.
            experiment_id = _parent_experiment(client, parent, uri)
        else:
            experiment_id = _experiment_id(
                client, experiment_name(stage, experiment_prefix), location
            )
        own = identity_entries(stage, identity)
        tags = run_tags(root, stage=stage, tile_index_hash=tile_index_hash) | own
        name = run_name or run_label(stage, identity)
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
            flat = list((flatten(params) | own).items())
            for start in range(0, len(flat), PARAMS_PER_BATCH):
                batch = [Param(k, v) for k, v in flat[start : start + PARAMS_PER_BATCH]]
                client.log_batch(run.info.run_id, params=batch, synchronous=True)
            if resolved_params_yaml is not None:
                mlflow.log_text(resolved_params_yaml, "params.resolved.yaml")
            with timing.work(stage):
                yield run
    finally:
        if preset is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = preset


def shared_view(stage: str, charts: str) -> dict[str, Any]:
    """A runs page of ``stage``'s runs: their identity as columns, grouped by backbone (which
    also lists a grid's runs flat, not folded under their ``repro-<time>`` run), every run
    visible and charted alone, and only the charts whose name holds ``charts``."""
    identity = ("dataset", "backbone", "init", "fraction", "seed")
    return {
        "searchFilter": f"tags.{STAGE_TAG} = '{stage}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": [f"params.`{IDENTITY_PREFIX}{key}`" for key in identity],
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": f"{IDENTITY_PREFIX}backbone"}],
        },
        "useGroupedValuesInCharts": False,
        "runsHiddenMode": "SHOW_ALL",
        "chartsSearchFilter": charts,
    }


def view_tags() -> dict[str, str]:
    """The experiment tags of :data:`VIEWS`."""
    return {
        f"{SHARED_VIEW_TAG}{key}": json.dumps(shared_view(stage, charts), sort_keys=True)
        for key, (stage, charts) in VIEWS.items()
    }


def _experiment_id(client: Any, name: str, location: str | None) -> str:
    """The experiment ``name``, created as a training experiment with the shared views (an
    older one gets what it lacks or holds in an older form)."""
    wanted = {EXPERIMENT_KIND_TAG: TRAINING_KIND, **view_tags()}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return str(client.create_experiment(name, artifact_location=location, tags=wanted))
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return str(experiment.experiment_id)


def ui_url(base: str, experiment_id: str | None = None, view: str | None = None) -> str:
    """The MLflow UI at ``base`` opened on its ML view (on an experiment's runs if given, in
    one of its shared :data:`VIEWS` if named)."""
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    shared = f"viewStateShareKey={view}&" if view else ""
    return f"{base.rstrip('/')}/#/{page}?{shared}{ML_VIEW_QUERY}"


def view_urls(uri: str, base: str, experiment: str) -> dict[str, str]:
    """The shared views' addresses in the experiment named ``experiment`` at ``uri`` (none when
    the store or the experiment does not exist yet: it is not created here)."""
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).is_file():
        return {}
    found = open_client(uri).get_experiment_by_name(experiment)
    if found is None:
        return {}
    return {key: ui_url(base, str(found.experiment_id), key) for key in VIEWS}


def _parent_experiment(client: Any, parent: str, uri: str) -> str:
    """The experiment of the run ``SOP_PARENT_RUN_ID`` names, which must exist at ``uri``."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_run(parent).info.experiment_id)
    except MlflowException:
        raise PipelineError(
            f"{PARENT_RUN_ENV}={parent}: no such run at {uri}; unset it, or point "
            "MLFLOW_TRACKING_URI at the tracking server that holds the parent run"
        ) from None


def utc_stamp(now: datetime | None = None) -> str:
    """``20260105T142501Z``: sortable, and safe in run names and file names."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@contextmanager
def parent_run(
    root: Path,
    *,
    targets: Sequence[str] = (),
    experiment_prefix: str = "sop",
    run_name: str | None = None,
) -> Iterator[Any]:
    """Open the grid's parent run and export its id in ``SOP_PARENT_RUN_ID`` meanwhile.

    Yields the :class:`mlflow.entities.Run`. The run ends FINISHED, FAILED on an exception
    (KILLED on Ctrl-C); ``SOP_PARENT_RUN_ID`` and ``MLFLOW_TRACKING_URI`` get their previous
    values back. The run is made through a client, not ``mlflow.start_run``: it is not this
    process's active run, so a stage run opened here (tests) is not taken for a nested one.
    """
    apply_env_defaults(root)
    import mlflow
    from mlflow.tracking.context.registry import resolve_tags

    preset_uri = os.environ.get("MLFLOW_TRACKING_URI")
    preset_parent = os.environ.get(PARENT_RUN_ENV)
    uri, location = tracking_uri(root), artifact_location(root)
    try:
        # A parent is top-level: an outer SOP_PARENT_RUN_ID would make it a child.
        os.environ.pop(PARENT_RUN_ENV, None)
        mlflow.set_tracking_uri(uri)
        client = open_client(uri)
        experiment_id = _experiment_id(client, experiment_prefix, location)
        tags = run_tags(root, stage="grid")
        tags.pop("dvc.stage", None)
        tags["dvc.targets"] = " ".join(targets) if targets else "(all)"
        run = client.create_run(
            experiment_id,
            run_name=run_name or f"repro-{utc_stamp()}",
            tags=resolve_tags(tags),
        )
        run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = run_id
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            client.set_terminated(run_id, status)
    finally:
        for key, value in (("MLFLOW_TRACKING_URI", preset_uri), (PARENT_RUN_ENV, preset_parent)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
