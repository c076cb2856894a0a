"""The ``paper`` flow: one ``dvc repro`` of a project as one Prefect flow run and one MLflow
parent run.

DVC runs each stage as its own process (``python ../stages/<stage>.py``), which runs its own
flow and logs its own MLflow run. While this flow runs, those processes report to its Prefect
API (no temporary server each) and their runs are children of its parent run
(``SOP_PARENT_RUN_ID``, see :mod:`pipeline.tracking`). ``prefect.yaml`` deploys this flow.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from prefect import flow

from pipeline import layout, tracking
from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.errors import PipelineError
from pipeline.flows.common import api_for_subprocesses
from pipeline.flows.grid import run_data_stages, run_grid, split_stages, stage_graph
from pipeline.flows.gridstage import CHECKOUT_ENV, dvc_env, forget_locked
from pipeline.flows.links import (
    PARENT_FLOW_RUN_ENV,
    STAGE_ERRORS_ENV,
    recorded_errors,
)
from pipeline.stagehost import HOST_ENV, stage_host

DEFAULT_CHECKOUT = "/work"  # where the Dockerfile's image expects the project


def project_dir(project: str | Path) -> Path:
    """The project folder (the one with params.yaml and dvc.yaml); a file in it names it too."""
    path = Path(project).expanduser().resolve()
    if path.is_file():
        path = path.parent
    missing = [
        name for name in (layout.PARAMS_FILE, layout.DVC_FILE) if not (path / name).is_file()
    ]
    if missing:
        raise PipelineError(
            f"{path}: no {' or '.join(missing)}; the project is the folder that holds "
            f"{layout.PARAMS_FILE} and {layout.DVC_FILE} (the repository, or demo/)"
        )
    return path


def run_dvc(root: Path, *args: str) -> None:
    """``dvc ARGS`` in ``root``, its output streamed through; a failure raises one line, with
    the one-line errors of the stages that failed (:mod:`pipeline.flows.links`)."""
    shown = " ".join(["dvc", *args])
    print(f"{root}$ {shown}", flush=True)
    errors = layout.state_dir(root) / f"stage-errors-{os.getpid()}.txt"
    errors.parent.mkdir(parents=True, exist_ok=True)
    errors.unlink(missing_ok=True)
    try:
        code = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=root,
            env=dvc_env({STAGE_ERRORS_ENV: str(errors)}),
            check=False,
        ).returncode
        failed = recorded_errors(errors)
    finally:
        errors.unlink(missing_ok=True)
    if code != 0:
        for line in failed:
            _error(f"stage failed: {line}")
        detail = "; ".join(failed) if failed else "its error is in its output above"
        raise PipelineError(f"`{shown}` exited with {code} in {root}: {detail}")


def _error(line: str) -> None:
    """``line`` at ERROR level in the flow run's log (red in the UI), or on stderr outside one."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().error(line)
    except MissingContextError:
        print(line, file=sys.stderr, flush=True)


def grid_on_pool(
    root: Path,
    pool: str,
    targets: Sequence[str],
    glob: bool,
    tracking_ids: dict[str, str],
    remote: bool,
    workers: int,
    threads: int | None,
) -> dict[str, Any]:
    """The grid on ``pool``; with ``workers``, on that many local workers started for it
    once this checkout's data stages are done (their worktrees link the data)."""
    from pipeline.flows.workers import local_workers

    graph = stage_graph(root, targets, glob)
    data = split_stages(graph)[0]
    local: AbstractContextManager[Any] = nullcontext()
    if workers:
        run_data_stages(root, data)
        local = local_workers(root, graph, data, workers, threads, pool)
    with local:
        return run_grid(root, pool, graph, tracking_ids, remote)


def final_repro(
    root: Path, grid: Sequence[str], targets: Sequence[str], glob: bool, remote: bool
) -> None:
    """The coordinator's own ``dvc repro`` after a grid: every grid stage restored from the
    run-cache, the rest (the report) run here. With a remote, the run-cache and the grid
    stages' outputs come from it first (``--pull`` on those alone: it would take the missing
    outputs of a stage that no cache holds for pulled)."""
    forget_locked(root, grid)
    if remote and grid:
        run_dvc(root, "fetch", "--run-cache", *grid)
        run_dvc(root, "repro", "--pull", *grid)
    run_dvc(root, "repro", *(["--glob"] if glob and targets else []), *targets)


def parse_remotes(listing: str) -> list[str]:
    """Remote names from ``dvc remote list`` (a ``name<TAB>url`` line per remote)."""
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def dvc_remotes(root: Path) -> list[str]:
    """The project's DVC remotes (every config level), as ``dvc remote list`` names them."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "list"],
        cwd=root,
        # DVC wraps its table at the terminal's width (80 columns when captured).
        env={**dvc_env(), "COLUMNS": "100000"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise PipelineError(
            f"`dvc remote list` exited with {result.returncode} in {root}"
            + (f": {lines[-1]}" if lines else "")
        )
    return parse_remotes(result.stdout)


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def results_metrics(table: Path) -> dict[str, float]:
    """Headline figures of the report's results.csv: cells, mean and best test mIoU, mean best
    validation mIoU (empty or NaN entries skipped)."""
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = {"results.cells": float(len(rows))}
    for column in ("test_miou", "best_val_miou"):
        values = [v for row in rows if (v := _number(row.get(column))) is not None]
        if values:
            metrics[f"results.{column}_mean"] = sum(values) / len(values)
            metrics[f"results.{column}_max"] = max(values)
    return metrics


def report_files(root: Path) -> list[Path]:
    """What of the report stage's outputs exists, and the project's params file."""
    results = layout.results_dir(root)
    candidates = [
        results / "report.md",
        results / "report.html",  # the report as MLflow's artifact viewer renders it
        results / layout.RESULTS_TABLE,
        *sorted(results.glob("*.png")),
        root / layout.PARAMS_FILE,
    ]
    return [path for path in candidates if path.is_file()]


def log_outputs(client: Any, run_id: str, root: Path) -> tuple[list[str], dict[str, float]]:
    """Log :func:`report_files` as artifacts (paths as in the project) and results.csv's
    figures as metrics to ``run_id``; return both."""
    logged = []
    for path in report_files(root):
        relative = path.relative_to(root)
        folder = relative.parent.as_posix()
        client.log_artifact(run_id, str(path), None if folder == "." else folder)
        logged.append(relative.as_posix())
    table = layout.results_dir(root) / layout.RESULTS_TABLE
    metrics = results_metrics(table) if table.is_file() else {}
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    return logged, metrics


def use_checkout(variable: str = CHECKOUT_ENV, default: str = DEFAULT_CHECKOUT) -> dict[str, str]:
    """Deployment pull step: run in the checkout named by ``$SOP_CHECKOUT`` (default
    ``/work``) on the worker's machine, where the code, data and DVC cache already are."""
    directory = Path(os.environ.get(variable) or default).expanduser()
    if not directory.is_dir():
        raise PipelineError(
            f"{directory}: no such folder (${variable}, default {default}); set {variable} on "
            "the worker to the repository checkout"
        )
    os.chdir(directory)
    return {"directory": str(directory.resolve())}


def _flow_run() -> tuple[str | None, str | None]:
    """This flow run's id, and its name when :func:`repro_run_name` made it (None outside a
    flow run; a deployment's run, which the engine renames, too)."""
    from prefect.runtime import flow_run

    run_id, name = flow_run.id, flow_run.name
    if not run_id:
        return None, None
    return str(run_id), (str(name) if name and str(name).startswith("repro-") else None)


def repro_run_name() -> str:
    """``repro-<UTC time>``: the paper run's name in Prefect and in MLflow alike."""
    return f"repro-{tracking.utc_stamp()}"


@contextmanager
def exported(variable: str, value: str | None) -> Iterator[None]:
    """``variable`` set to ``value`` (when not None) meanwhile, as it was afterwards."""
    previous = os.environ.get(variable)
    if value is not None:
        os.environ[variable] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous


@flow(name="paper", flow_run_name=repro_run_name, log_prints=True)
def paper_flow(
    project: str = ".",
    targets: list[str] | None = None,
    push: bool | None = None,
    glob: bool = False,
    warm: bool = True,
    pool: str | None = None,
    workers: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Reproduce ``project``'s DVC pipeline under one MLflow parent run.

    ``warm``: the stages run in a warm stage host (``pipeline.stagehost``) that imports the
    stack once, instead of each stage process importing it (about 5 s a stage).

    ``targets``: DVC stages to reproduce (default: all); with ``glob``, patterns such as
    ``finetune@loveda-*`` (a machine's share of the grid). ``push``: ``dvc push`` afterwards;
    None pushes when the project has a DVC remote. The report's outputs and params.yaml are
    logged to the parent run.

    ``pool``: the coordinator of a grid on that Prefect work pool's workers
    (:mod:`pipeline.flows.grid`): each stage a deployment run, then this checkout's
    ``dvc repro`` restores them from the run-cache and writes dvc.lock and the report.
    ``workers``: start that many local workers for it first (:mod:`pipeline.flows.workers`),
    each stage limited to ``threads`` CPU threads when given.
    """
    root = project_dir(project)
    apply_env_defaults(root)
    prefix = load_params(root / layout.PARAMS_FILE).tracking.experiment_prefix
    chosen: Sequence[str] = list(targets or [])
    uri = tracking.tracking_uri(root)
    import mlflow

    prefect_run, name = _flow_run()
    with (
        tracking.parent_run(root, targets=chosen, experiment_prefix=prefix, run_name=name) as run,
        api_for_subprocesses(),
        # The stage processes' flow runs become this run's subflow runs.
        exported(PARENT_FLOW_RUN_ENV, prefect_run),
        # One started before this flow (``sop repro``) serves it.
        stage_host(layout.state_dir(root), mlflow_uri=uri)
        if warm and not os.environ.get(HOST_ENV)
        else nullcontext(),
    ):
        run_id = run.info.run_id
        client = mlflow.MlflowClient(uri)
        if prefect_run:
            client.set_tag(run_id, "prefect.flow_run_id", prefect_run)
        print(f"MLflow parent run {run_id} ({run.info.run_name}) at {uri}")
        remotes = dvc_remotes(root)
        print(f"DVC remotes: {', '.join(remotes)}" if remotes else "no DVC remote")
        grid = None
        if pool:
            tracking_ids = {"uri": uri, "parent_run_id": run_id}
            grid = grid_on_pool(
                root, pool, chosen, glob, tracking_ids, bool(remotes), workers, threads
            )
            final_repro(root, grid["grid"], chosen, glob, bool(remotes))
        else:
            run_dvc(root, "repro", *(["--glob"] if glob and chosen else []), *chosen)
        if push is None:
            push = bool(remotes)
        if push:
            run_dvc(root, "push")
        client.set_tag(run_id, "dvc.pushed", str(push).lower())
        artifacts, metrics = log_outputs(client, run_id, root)
    return {
        "project": str(root),
        "parent_run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "targets": list(chosen),
        "pushed": push,
        "artifacts": artifacts,
        "metrics": metrics,
        "grid": grid,
    }
