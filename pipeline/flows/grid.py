"""The grid on many workers: the ``paper`` flow coordinates, Prefect's work pool runs stages.

The coordinator reads DVC's stage graph and splits it three ways:

- *local* stages (data: synth, download, tile) keep their outputs out of DVC's cache, so no
  run-cache can carry them: every checkout runs them itself, once (the coordinator first, a
  worker's checkout on its first stage);
- *grid* stages (pretrain, weights, finetune, evaluate) have every plain output cached: each
  is submitted, as soon as its upstream grid stages are done, as one run of the ``stage``
  deployment on the work pool. A worker runs ``dvc repro <stage>`` in its own checkout, where
  DVC restores the upstream stages from the run-cache (shared cache, or a remote with
  ``--run-cache``) and runs this one;
- the rest (the report) runs in the coordinator's final ``dvc repro``, which restores every
  grid stage from the run-cache ("Stage ... is cached - skipping run") and writes dvc.lock.

Prefect queues the runs and hands them to workers; this module only decides *when* a stage is
ready, watches the runs' states, and resubmits a run whose worker stopped heart-beating (killed
with its stage): the new run restores or restarts it elsewhere. A run that fails for a reason
of its own fails the grid once, with its one-line error.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import chdir
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from pipeline import layout
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.flows.gridstage import STAGE_DEPLOYMENT, WORKER_TAG, repo_state, run_dvc_logged

POLL_SECONDS = 0.5
LOST_AFTER_HEARTBEATS = 3  # a worker silent for this many heartbeat intervals is gone...
LOST_AFTER_SECONDS = 30.0  # ...and for this long: a busy machine delays a heartbeat by seconds
MAX_LOST_ATTEMPTS = 3  # runs of one stage lost with their workers before the grid gives up
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
TIMELINE_FILE = "grid-timeline.json"


@dataclass(frozen=True)
class GridStage:
    name: str
    upstream: tuple[str, ...]
    cacheable: bool
    outs: tuple[str, ...] = ()  # relative to the project


def _cacheable(stage: Any) -> bool:
    """Whether DVC's run-cache can hold the stage: a command, no persisted output and every
    plain output cached (metrics and plots may stay out of the cache)."""
    if not stage.cmd or not stage.outs:
        return False
    for out in stage.outs:
        if out.persist or (not out.use_cache and not (out.metric or out.plot)):
            return False
    return True


def stage_graph(
    root: Path, targets: Sequence[str] = (), glob: bool = False
) -> dict[str, GridStage]:
    """The project's DVC stages (those ``targets`` need, or all) with their upstream stages."""
    from dvc.repo import Repo

    # DVC names stages relative to the working directory ("demo/dvc.yaml:tile@x" from above).
    with chdir(root), Repo(str(root)) as repo:
        graph = repo.index.graph
        by_name = {stage.addressing: stage for stage in graph.nodes}
        upstream = {
            name: tuple(sorted(s.addressing for s in graph.successors(stage)))
            for name, stage in by_name.items()
        }
        chosen = _match(by_name, targets, glob) if targets else list(by_name)
        needed = set(chosen)
        for name in chosen:
            needed |= _all_upstream(upstream, name)
        return {
            name: GridStage(
                name,
                upstream[name],
                _cacheable(by_name[name]),
                tuple(str(out.def_path) for out in by_name[name].outs),
            )
            for name in sorted(needed)
        }


def _match(stages: Mapping[str, Any], targets: Sequence[str], glob: bool) -> list[str]:
    chosen: list[str] = []
    for target in targets:
        found = fnmatch.filter(stages, target) if glob else [t for t in stages if t == target]
        if not found:
            raise PipelineError(f"{target}: no such DVC stage (`dvc stage list` names them)")
        chosen += found
    return chosen


def split_stages(graph: Mapping[str, GridStage]) -> tuple[list[str], list[str], list[str]]:
    """(local data stages, grid stages, stages for the final repro), each sorted."""
    local = {n for n, s in graph.items() if not s.cacheable}
    data: set[str] = set()
    for name in sorted(local):
        if _all_upstream({n: s.upstream for n, s in graph.items()}, name) <= local:
            data.add(name)
    grid = sorted(n for n, s in graph.items() if s.cacheable)
    return sorted(data), grid, sorted(local - data)


def _all_upstream(upstream: Mapping[str, Sequence[str]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(upstream[name])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += upstream[current]
    return seen


@dataclass
class Attempt:
    stage: str
    flow_run_id: UUID
    ready: float
    submitted: float
    worker: str | None = None
    started: float | None = None
    ended: float | None = None
    noticed: float | None = None
    state: str = "SCHEDULED"


@dataclass
class GridState:
    """What the coordinator knows: stages done, attempts in flight, and every attempt."""

    stages: list[str]
    upstream: dict[str, set[str]]
    done: set[str] = field(default_factory=set)
    running: dict[str, Attempt] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    lost: dict[str, int] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    failure: str | None = None

    def ready(self) -> list[str]:
        """Stages whose upstream grid stages are all done and that are not done or running."""
        return [
            s
            for s in self.stages
            if s not in self.done and s not in self.running and self.upstream[s] <= self.done
        ]

    def progress(self) -> str:
        started = sum(1 for a in self.running.values() if a.state == "RUNNING")
        queued = len(self.running) - started
        waiting = len(self.stages) - len(self.done) - len(self.running)
        return (
            f"grid: {len(self.done)}/{len(self.stages)} done, {started} running, "
            f"{queued} queued, {waiting} waiting"
        )


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def _worker_of(tags: Iterable[str]) -> str | None:
    return next((t.removeprefix(WORKER_TAG) for t in tags if t.startswith(WORKER_TAG)), None)


def lost_workers(client: Any, pool: str, now: datetime | None = None) -> set[str]:
    """Names of the pool's workers whose last heartbeat is older than a few intervals."""
    now = now or datetime.now(UTC)
    lost = set()
    for worker in client.read_workers_for_work_pool(pool):
        interval = worker.heartbeat_interval_seconds or 30
        last = worker.last_heartbeat_time
        silence = max(LOST_AFTER_HEARTBEATS * interval, LOST_AFTER_SECONDS)
        if last is None or (now - last).total_seconds() > silence:
            lost.add(worker.name)
    return lost


def _failure_message(run: Any) -> str:
    message = (run.state.message if run.state else None) or "no message"
    # Prefect's "Flow run encountered an exception: PipelineError: <line>": keep the line.
    return message.split("PipelineError: ", 1)[-1].strip()


class Coordinator:
    """Submits ready stages as deployment runs and follows them until the grid is done."""

    def __init__(self, state: GridState, pool: str, parameters: dict[str, Any]) -> None:
        self.state = state
        self.pool = pool
        self.parameters = parameters
        self.started = time.time()

    def submit_ready(self) -> None:
        from prefect.deployments import run_deployment

        for stage in self.state.ready():
            ready = self.state.ready_at.get(stage, self.started)
            run: Any = run_deployment(
                STAGE_DEPLOYMENT,
                parameters={"stage": stage, **self.parameters},
                timeout=0,
                flow_run_name=stage,
                tags=["sop-grid"],
                as_subflow=True,
            )
            attempt = Attempt(stage, run.id, ready, time.time())
            self.state.running[stage] = attempt
            self.state.attempts.append(attempt)
            print(f"submitted {stage} (run {run.name})", flush=True)

    def poll(self, client: Any) -> None:
        """Read the runs in flight: act on each that ended, or whose worker is gone."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        by_id = {a.flow_run_id: a for a in self.state.running.values()}
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(by_id)))
        )
        lost = lost_workers(client, self.pool)
        for run in runs:
            attempt = by_id[run.id]
            attempt.state = run.state.type.value if run.state else "SCHEDULED"
            attempt.worker = _worker_of(run.tags) or attempt.worker
            attempt.started = _timestamp(run.start_time)
            if attempt.state in FINAL_STATES:
                attempt.ended = _timestamp(run.end_time)
                attempt.noticed = time.time()
                self._ended(attempt, run)
            elif attempt.worker in lost:
                self._lost(client, attempt)

    def _ended(self, attempt: Attempt, run: Any) -> None:
        stage = attempt.stage
        del self.state.running[stage]
        if attempt.state == "COMPLETED":
            self.state.done.add(stage)
            for other in self.state.ready():
                self.state.ready_at.setdefault(other, attempt.noticed or time.time())
            took = (attempt.ended or 0) - (attempt.started or 0)
            print(f"done {stage} on {attempt.worker} ({took:.1f} s)", flush=True)
        elif attempt.state == "FAILED":
            self.state.failure = self.state.failure or _failure_message(run)
            print(f"failed {stage} on {attempt.worker}: {_failure_message(run)}", flush=True)
        else:
            self._count_lost(stage, f"run {attempt.state.lower()}")

    def _lost(self, client: Any, attempt: Attempt) -> None:
        from prefect.states import Crashed

        why = f"worker {attempt.worker} stopped sending heartbeats"
        client.set_flow_run_state(attempt.flow_run_id, Crashed(message=why), force=True)
        attempt.state = "CRASHED"
        attempt.noticed = time.time()
        del self.state.running[attempt.stage]
        self._count_lost(attempt.stage, why)

    def _count_lost(self, stage: str, why: str) -> None:
        count = self.state.lost[stage] = self.state.lost.get(stage, 0) + 1
        if count >= MAX_LOST_ATTEMPTS:
            self.state.failure = self.state.failure or f"{stage}: lost {count} times ({why})"
        else:
            print(f"lost {stage} ({why}): submitted again", flush=True)

    def run(self) -> None:
        from prefect.client.orchestration import get_client

        shown = ""
        with get_client(sync_client=True) as client:
            while True:
                if self.state.failure is None:
                    self.submit_ready()
                if not self.state.running:
                    break
                time.sleep(POLL_SECONDS)
                self.poll(client)
                if (line := self.state.progress()) != shown:
                    print(line, flush=True)
                    shown = line


def check_pool(pool: str) -> None:
    """The work pool and the ``stage`` deployment exist (else one line on how to make them)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise PipelineError(
                f"work pool {pool!r}: none at {client.api_url}; "
                f"`prefect work-pool create {pool} --type process` (README, Cluster)"
            ) from None
        try:
            client.read_deployment_by_name(STAGE_DEPLOYMENT)
        except ObjectNotFound:
            raise PipelineError(
                f"deployment {STAGE_DEPLOYMENT!r}: none at {client.api_url}; "
                "`prefect --no-prompt deploy --name stage` at the repository root"
            ) from None


def timeline(state: GridState) -> dict[str, Any]:
    """The attempts' times (coordinator's clock and the runs' own), for benchmarks and logs."""
    return {
        "attempts": [
            {k: (str(v) if isinstance(v, UUID) else v) for k, v in vars(a).items()}
            for a in state.attempts
        ],
    }


def run_data_stages(root: Path, data: Sequence[str]) -> None:
    """The data stages in this checkout (each checkout downloads and tiles for itself)."""
    from pipeline.flows.gridstage import dvc_env

    if data:
        code, _ = run_dvc_logged(root, ["repro", *data], dvc_env())
        if code != 0:
            raise PipelineError(f"`dvc repro {' '.join(data)}` exited with {code} in {root}")


def run_grid(
    root: Path,
    pool: str,
    graph: Mapping[str, GridStage],
    tracking: dict[str, str],
    remote: bool,
) -> dict[str, Any]:
    """Every grid stage of ``graph`` on the pool's workers (the data stages done here first);
    raise the first real failure's line. ``tracking``: ``uri`` and ``parent_run_id`` for the
    stages' MLflow runs."""
    from pipeline.flows.gridstage import dvc_cache_dir

    data, grid, final = split_stages(graph)
    print(
        f"stages: {len(data)} data (in each checkout), {len(grid)} on pool {pool!r}, "
        f"{len(final)} in the final repro"
    )
    check_pool(pool)
    run_data_stages(root, data)
    parameters = {
        "grid": repo_state(root),
        "tracking_uri": tracking["uri"],
        "parent_run_id": tracking["parent_run_id"],
        "remote": remote,
        "cache_dir": None if remote else dvc_cache_dir(root),
        "data": data,
        "grid_stages": grid,
    }
    grid_set = set(grid)
    state = GridState(grid, {s: set(graph[s].upstream) & grid_set for s in grid})
    Coordinator(state, pool, parameters).run()
    record = timeline(state)
    write_text(layout.state_dir(root) / TIMELINE_FILE, json.dumps(record, indent=1) + "\n")
    if state.failure:
        raise PipelineError(f"the grid stopped: {state.failure}")
    return {"data": data, "grid": grid, "final": final, **record}
