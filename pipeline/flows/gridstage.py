"""The ``stage`` flow: one DVC stage of a grid, run by a work-pool worker in its own checkout.

The coordinator (:mod:`pipeline.flows.grid`) submits it as a run of the ``stage`` deployment
(prefect.yaml). In the worker's checkout (``$SOP_CHECKOUT``, where the deployment's pull step
moved) it runs ``dvc repro <stage>``: DVC runs the checkout's data stages the first time (each
checkout tiles once), restores every upstream grid stage from the run-cache, and runs this
one. With a DVC remote the run-cache comes from it first and the stage's outputs and run go
back to it; without one, the worker's checkout must share the coordinator's DVC cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prefect import flow

from pipeline import layout, tracking
from pipeline.errors import PipelineError
from pipeline.files import write_text

STAGE_DEPLOYMENT = "stage/stage"
WORKER_TAG = "worker:"
CHECKOUT_ENV = "SOP_CHECKOUT"
WORKER_NAME_ENV = "PREFECT__WORKER_NAME"  # set by Prefect's workers in each run's environment
RAN = re.compile(r"^Running stage '([^']+)'")
RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run")


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """DVC's environment: this interpreter's folder first on PATH, so that the stages'
    ``python`` is this one (a worker need not have the venv on its PATH)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{path}" if path else bin_dir}
    return {**env, **(extra or {})}


def run_dvc_logged(root: Path, args: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """``dvc ARGS`` in ``root``: each output line printed as it comes (the run's log), and
    returned with the exit code."""
    print(f"{root}$ dvc {' '.join(args)}", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        print(lines[-1], flush=True)
    return process.wait(), lines


def _git(checkout: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout


def repo_state(root: Path) -> dict[str, str]:
    """Where ``root`` sits in its git checkout, the commit, and a digest of its uncommitted
    changes (dvc.lock aside: each checkout writes its own)."""
    checkout = Path(_git(root, "rev-parse", "--show-toplevel").strip())
    diff = _git(checkout, "diff", "HEAD", "--binary", "--", ".", ":(exclude)*dvc.lock")
    return {
        "checkout": str(checkout),
        "project": root.resolve().relative_to(checkout.resolve()).as_posix(),
        "commit": _git(checkout, "rev-parse", "HEAD").strip(),
        "changes": hashlib.sha256(diff.encode()).hexdigest(),
    }


def dvc_cache_dir(root: Path) -> str:
    """The DVC cache folder ``root``'s project uses (``dvc cache dir``)."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "cache", "dir"],
        cwd=root,
        env=dvc_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise PipelineError(f"`dvc cache dir` failed in {root}: {result.stderr.strip()}")
    return str(Path(result.stdout.strip()).resolve())


def check_same_grid(root: Path, grid: dict[str, str], cache_dir: str | None) -> None:
    """A worker runs the coordinator's code, params and pipeline, or nothing."""
    mine = repo_state(root)
    if mine["commit"] != grid["commit"]:
        raise PipelineError(
            f"{mine['checkout']}: this worker's checkout is at {mine['commit'][:12]}, the grid "
            f"at {grid['commit'][:12]}: `git fetch && git checkout {grid['commit'][:12]}` there"
        )
    if mine["changes"] != grid["changes"]:
        raise PipelineError(
            f"{mine['checkout']}: its uncommitted changes differ from the coordinator's "
            "(`git diff HEAD` in both); commit them, or make both checkouts equal"
        )
    if cache_dir is not None and dvc_cache_dir(root) != cache_dir:
        raise PipelineError(
            f"{root}: no DVC remote, and this checkout's DVC cache is not the grid's "
            f"({cache_dir}): `dvc cache dir --local {cache_dir}` there, or add a remote"
        )


def forget_locked(root: Path, stages: Iterable[str]) -> None:
    """Drop ``stages``' entries from ``root``'s dvc.lock.

    A lock written elsewhere (another machine kind, another thread count: other float bits)
    can match a stage's inputs and name outputs no cache holds. DVC then trusts it over the
    run-cache and runs the stage again. Without the entry, DVC looks the stage's inputs up in
    the run-cache and restores the run a worker recorded (the lock is rewritten as it goes).
    """
    lock = root / layout.LOCK_FILE
    if not lock.is_file():
        return
    content = yaml.safe_load(lock.read_text()) or {}
    entries = content.get("stages") or {}
    kept = {name: entry for name, entry in entries.items() if name not in set(stages)}
    if len(kept) != len(entries):
        write_text(lock, yaml.safe_dump({**content, "stages": kept}, sort_keys=False))


def stage_error(stage: str, lines: list[str], code: int) -> str:
    """The stage's own one-line error if it printed one, else DVC's last error line."""
    for prefix in ("error: ", "ERROR: "):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return f"{stage}: {found[-1].removeprefix(prefix)}"
    return f"{stage}: `dvc repro` exited with {code}"


def _tag_run(worker: str) -> None:
    """Show on the run (Prefect UI, and the coordinator) which worker runs it."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        tags = [t for t in flow_run.tags if not t.startswith(WORKER_TAG)]
        client.update_flow_run(flow_run.id, tags=[*tags, f"{WORKER_TAG}{worker}"])


def stage_env(checkout: Path, tracking_uri: str, parent_run_id: str) -> dict[str, str]:
    """The stage's environment: this checkout's code first on the path, the grid's MLflow."""
    pythonpath = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p)
    env = dvc_env(
        {
            "PYTHONPATH": pythonpath,
            "MLFLOW_TRACKING_URI": tracking_uri,
            tracking.PARENT_RUN_ENV: parent_run_id,
        }
    )
    env.pop("SOP_STAGE_HOST", None)  # a host started for another checkout runs its code
    return env


@flow(name="stage", log_prints=True)
def stage_flow(
    stage: str,
    grid: dict[str, str],
    tracking_uri: str,
    parent_run_id: str,
    remote: bool = False,
    cache_dir: str | None = None,
    data: list[str] | None = None,
    grid_stages: list[str] | None = None,
) -> dict[str, Any]:
    """``dvc repro <stage>`` in this worker's checkout, for the grid ``grid`` describes
    (:func:`repo_state` of the coordinator's project). ``data``: the grid's data stages,
    run here first when there is a remote (``--pull`` would take their missing outputs,
    which no cache holds, for pulled). ``grid_stages``: the stages of the grid, which this
    checkout restores from the run-cache, never from a lock entry (:func:`forget_locked`)."""
    checkout = Path(os.environ.get(CHECKOUT_ENV) or ".").resolve()
    worker = os.environ.get(WORKER_NAME_ENV) or socket.gethostname()
    _tag_run(worker)
    root = checkout / grid["project"]
    check_same_grid(root, grid, cache_dir)
    env = stage_env(checkout, tracking_uri, parent_run_id)
    forget_locked(root, set(grid_stages or ()) | {stage})
    if remote:
        if data:
            _must(root, stage, ["repro", *data], env)
        _must(root, stage, ["fetch", "--run-cache", stage], env)
    code, lines = run_dvc_logged(root, ["repro", *(["--pull"] if remote else []), stage], env)
    if code != 0:
        raise PipelineError(stage_error(stage, lines, code))
    if remote:
        _must(root, stage, ["push", "--run-cache", stage], env)
        push_uncached_outputs(root, stage)
    ran = [m.group(1) for line in lines if (m := RAN.match(line))]
    restored = [m.group(1) for line in lines if (m := RESTORED.match(line))]
    print(f"worker {worker} stage {stage}: ran {ran or 'nothing'}; restored {restored or 'none'}")
    return {"stage": stage, "worker": worker, "ran": ran, "restored": restored}


def push_uncached_outputs(root: Path, stage: str) -> None:
    """Push the stage's metrics and plots (``cache: false``) to the remote as well.

    DVC's run-cache keeps them (it commits them to the local cache when it records the run),
    and restoring the run elsewhere pulls them, but ``dvc push --run-cache`` sends only the
    cached outputs: without this, another machine finds the run and not its metrics, and runs
    the stage again.
    """
    from contextlib import chdir

    from dvc.repo import Repo

    with chdir(root), Repo(str(root)) as repo:
        infos = [
            out.hash_info
            for found in repo.stage.collect(stage)
            for out in found.outs
            if not out.use_cache and out.hash_info
        ]
        if infos:
            result = repo.cloud.push(infos)
            if result.failed:
                raise PipelineError(f"{stage}: pushing its metrics and plots failed")
            print(f"pushed {len(infos)} metrics and plots files of {stage}", flush=True)


def _must(root: Path, stage: str, args: list[str], env: dict[str, str]) -> None:
    code, lines = run_dvc_logged(root, args, env)
    if code != 0:
        raise PipelineError(stage_error(stage, lines, code))
