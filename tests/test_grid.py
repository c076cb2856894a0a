"""The grid on a work pool (pipeline.flows.grid, pipeline.flows.gridstage).

Unit tests first. The slow tier is the README's Cluster section on loopback: a Prefect
server, an MLflow server, a local-folder DVC remote and three workers, each in its own clone
(three "machines"), running the demo grid; then a worker killed mid-finetune.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.flows import grid, gridstage, workers
from pipeline.flows.grid import Attempt, Coordinator, GridStage, GridState
from tests.servers import mlflow_server, prefect_server

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")


# --- unit tests ---------------------------------------------------------------------------


def out(*, cache: bool = True, persist: bool = False, metric: bool = False) -> Any:
    return SimpleNamespace(use_cache=cache, persist=persist, metric=metric, plot=False)


@pytest.mark.parametrize(
    ("outs", "expected"),
    [
        ([out()], True),
        ([out(), out(cache=False, metric=True)], True),  # metrics outside the cache: fine
        ([out(cache=False)], False),  # DVC saves no run for it
        ([out(persist=True)], False),
        ([], False),
    ],
)
def test_a_stage_is_a_grid_stage_only_if_the_run_cache_can_hold_it(
    outs: list[Any], expected: bool
) -> None:
    assert grid._cacheable(SimpleNamespace(cmd="python x.py", outs=outs)) is expected


def demo_like() -> dict[str, GridStage]:
    return {
        "synth": GridStage("synth", (), False),
        "tile": GridStage("tile", ("synth",), False),
        "pretrain": GridStage("pretrain", ("tile",), True),
        "weights": GridStage("weights", ("pretrain",), True),
        "finetune": GridStage("finetune", ("tile", "weights"), True),
        "report": GridStage("report", ("finetune",), False),
    }


def test_split_data_stages_grid_stages_and_the_final_ones() -> None:
    data, on_pool, final = grid.split_stages(demo_like())
    assert (data, on_pool, final) == (
        ["synth", "tile"],
        ["finetune", "pretrain", "weights"],
        ["report"],
    )


def state_of(stages: dict[str, GridStage]) -> GridState:
    _, on_pool, _ = grid.split_stages(stages)
    return GridState(on_pool, {s: set(stages[s].upstream) & set(on_pool) for s in on_pool})


def test_a_stage_is_ready_once_its_upstream_grid_stages_are_done() -> None:
    state = state_of(demo_like())
    assert state.ready() == ["pretrain"]
    state.done.add("pretrain")
    assert state.ready() == ["weights"]
    state.running["weights"] = Attempt("weights", uuid4(), 0.0, 0.0)
    assert state.ready() == []
    assert state.progress() == "grid: 1/3 done, 0 running, 1 queued, 1 waiting"


class FakeClient:
    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers
        self.states: list[tuple[Any, str]] = []

    def read_workers_for_work_pool(self, pool: str) -> list[Any]:
        return self.workers

    def set_flow_run_state(self, run_id: Any, state: Any, force: bool) -> None:
        self.states.append((run_id, state.type.value))


def worker(name: str, seconds_ago: float, interval: float = 2) -> Any:
    last = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return SimpleNamespace(name=name, last_heartbeat_time=last, heartbeat_interval_seconds=interval)


def test_a_worker_silent_for_three_heartbeats_and_half_a_minute_is_lost() -> None:
    client = FakeClient(
        [worker("alive", 1), worker("busy", 20), worker("gone", 31), worker("slow", 91, 30)]
    )
    assert grid.lost_workers(client, "gpu") == {"gone", "slow"}


def run_with(state: str, message: str | None = None) -> Any:
    now = datetime.now(UTC)
    return SimpleNamespace(
        state=SimpleNamespace(message=message), start_time=now, end_time=now, tags=[]
    )


def coordinator() -> Coordinator:
    state = state_of(demo_like())
    return Coordinator(state, "gpu", {})


def test_a_real_failure_stops_the_grid_once_with_its_line() -> None:
    coord = coordinator()
    attempt = Attempt("pretrain", uuid4(), 0.0, 0.0, worker="m1", state="FAILED")
    coord.state.running["pretrain"] = attempt
    message = "Flow run encountered an exception: PipelineError: pretrain: bad lr"
    coord._ended(attempt, run_with("FAILED", message))
    assert coord.state.failure == "pretrain: bad lr"
    assert coord.state.ready() == ["pretrain"]  # ready, but nothing is submitted after a failure
    assert "pretrain" not in coord.state.done


def test_a_run_lost_with_its_worker_is_crashed_and_submitted_again_a_few_times() -> None:
    coord = coordinator()
    client = FakeClient([])
    for count in range(1, grid.MAX_LOST_ATTEMPTS + 1):
        attempt = Attempt("pretrain", uuid4(), 0.0, 0.0, worker="m1", state="RUNNING")
        coord.state.running["pretrain"] = attempt
        coord._lost(client, attempt)
        assert client.states[-1] == (attempt.flow_run_id, "CRASHED")
        assert "pretrain" not in coord.state.running
        assert (coord.state.failure is None) is (count < grid.MAX_LOST_ATTEMPTS)
    assert coord.state.failure is not None
    assert "lost 3 times" in coord.state.failure


def test_the_stage_error_is_its_own_line_else_dvcs() -> None:
    lines = ["Running stage 'x':", "error: params.yaml: finetune.lr: must be > 0", "ERROR: failed"]
    assert gridstage.stage_error("x", lines, 2) == "x: params.yaml: finetune.lr: must be > 0"
    assert gridstage.stage_error("x", ["ERROR: failed to reproduce 'x'"], 1) == (
        "x: failed to reproduce 'x'"
    )
    assert gridstage.stage_error("x", [], 3) == "x: `dvc repro` exited with 3"


def test_a_lock_written_elsewhere_loses_the_grid_stages_entries(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  tile:\n    cmd: t\n  finetune@a:\n    cmd: f\n"
        "  report:\n    cmd: r\n"
    )
    gridstage.forget_locked(tmp_path, ["finetune@a", "pretrain@b"])
    content = yaml.safe_load(lock.read_text())
    assert content == {"schema": "2.0", "stages": {"tile": {"cmd": "t"}, "report": {"cmd": "r"}}}
    gridstage.forget_locked(tmp_path / "absent", ["x"])  # no lock: nothing to do


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_a_worker_at_another_commit_or_with_other_changes_refuses(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "a.txt").write_text("1\n")
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "one")
    state = gridstage.repo_state(origin)
    assert state["project"] == "."
    gridstage.check_same_grid(origin, state, None)
    (origin / "a.txt").write_text("2\n")
    with pytest.raises(PipelineError, match="uncommitted changes differ"):
        gridstage.check_same_grid(origin, state, None)
    git(origin, "commit", "-qam", "two")
    with pytest.raises(PipelineError, match="this worker's checkout is at"):
        gridstage.check_same_grid(origin, state, None)


def test_a_worktree_carries_the_checkouts_uncommitted_changes(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "a.txt").write_text("1\n")
    (origin / "dvc.lock").write_text("lock: 1\n")
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "one")
    (origin / "a.txt").write_text("2\n")
    (origin / "dvc.lock").write_text("lock: 2\n")  # each checkout writes its own
    tree = workers.worktree(origin, tmp_path / "wt")
    assert (tree / "a.txt").read_text() == "2\n"
    assert (tree / "dvc.lock").read_text() == "lock: 1\n"
    gridstage.check_same_grid(tree, gridstage.repo_state(origin), None)
    (origin / "a.txt").write_text("3\n")
    assert (workers.worktree(origin, tmp_path / "wt") / "a.txt").read_text() == "3\n"


def test_seeding_links_the_data_outputs_and_copies_the_lock(tmp_path: Path) -> None:
    project, other = tmp_path / "project", tmp_path / "other"
    (project / "data" / "tiles" / "x").mkdir(parents=True)
    (project / "data" / "tiles" / "x" / "index.parquet").write_bytes(b"tiles")
    (project / "archive.zip").write_bytes(b"zip")
    (project / "dvc.lock").write_text("stages: {}\n")
    other.mkdir()
    stages = {
        "tile": GridStage("tile", (), False, ("data/tiles/x",)),
        "synth": GridStage("synth", (), False, ("archive.zip", "absent.md5")),
    }
    workers.seed_data(project, other, stages, ["synth", "tile"])
    linked = other / "data" / "tiles" / "x" / "index.parquet"
    assert linked.read_bytes() == b"tiles"
    assert linked.stat().st_ino == (project / "data/tiles/x/index.parquet").stat().st_ino
    assert (other / "archive.zip").stat().st_ino == (project / "archive.zip").stat().st_ino
    assert not (other / "absent.md5").exists()
    assert (other / "dvc.lock").read_text() == "stages: {}\n"


def test_workers_are_pinned_one_gpu_each_and_threads_limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: H100'\necho 'GPU 1: H100'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert workers.gpu_slots(2) == ["0", "1"]
    with pytest.raises(PipelineError, match="2 GPUs, one per worker"):
        workers.gpu_slots(3)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert workers.gpu_slots(3) == [None, None, None]
    env = workers.worker_env(tmp_path, "1", 2)
    assert (env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]) == ("1", "2")
    assert env["SOP_CHECKOUT"] == env["PYTHONPATH"] == str(tmp_path)


# --- the cluster on loopback (slow) -------------------------------------------------------

POOL = "gpu"
KILLED_CELL = "landcoverai-resnet_demo-random-1.0-0"


def snapshot(origin: Path, edit: Callable[[Path], None] | None = None) -> None:
    """A git repository holding this working tree as it is (committed or not), ``edit``ed."""
    listed = git(REPO, "ls-files", "-z", "-co", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, origin / name)
    if edit is not None:
        edit(origin)
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "snapshot")


def resnet_cells_only(origin: Path) -> None:
    """The demo's grid with its ResNet cells only (both backbones still pretrain): 16 grid
    stages, half the demo's, keep the three-machine test within the suite's budget."""
    params = origin / "demo" / "params.yaml"
    text = params.read_text()
    models = re.search(r"(?m)^  models: \[(.*)\]$", text)
    assert models is not None, text
    resnet = [m for m in models.group(1).split(", ") if m.startswith("resnet_demo-")]
    params.write_text(text.replace(models.group(0), f"  models: [{', '.join(resnet)}]"))


def base_env(api: str, uri: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": uri}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    # Three stages at two threads each share two cores: threads that wait sleep, not spin.
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@contextmanager
def prefect_worker(name: str, checkout: Path, env: dict[str, str], log: Path) -> Iterator[int]:
    """README, Cluster: `prefect worker start --pool gpu` in the worker's checkout."""
    worker_env = {
        **env,
        "SOP_CHECKOUT": str(checkout),
        "PYTHONPATH": str(checkout),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
        "PREFECT_HOME": str(log.parent / f"home-{name}"),
    }
    command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--limit", "1"],
            cwd=checkout,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process.pid
        finally:
            kill_tree(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid, signal.SIGKILL)
                process.wait(30)


def descendants(pid: int) -> list[int]:
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in listing.stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def kill_tree(pid: int, sig: signal.Signals) -> None:
    for member in descendants(pid):
        with suppress(ProcessLookupError):
            os.kill(member, sig)


@contextmanager
def cluster(tmp: Path, workers: int) -> Iterator[dict[str, Any]]:
    """Servers, a DVC remote, a coordinator clone and ``workers`` worker clones, each its
    own machine; the pool and the `stage` deployment made as the README says."""
    origin = tmp / "origin"
    origin.mkdir()
    snapshot(origin, edit=resnet_cells_only)
    with ExitStack() as stack:
        api = stack.enter_context(prefect_server(mkdir(tmp / "prefect")))
        uri = stack.enter_context(mlflow_server(mkdir(tmp / "mlflow")))
        env = base_env(api, uri)
        names = ["coordinator", *(f"m{i}" for i in range(1, workers + 1))]
        for name in names:
            git(tmp, "clone", "-q", str(origin), name)
            # A grid no machine ran before: no stage is up to date by the committed lock, so
            # every output comes from a worker's run or DVC's run-cache (and the lock the
            # coordinator writes is compared with the committed one below).
            (tmp / name / "demo" / "dvc.lock").unlink()
            dvc = [
                str(BIN / "dvc"),
                "remote",
                "add",
                "-d",
                "--local",
                "shared",
                str(tmp / "remote"),
            ]
            run(dvc, tmp / name / "demo", env)
        coordinator = tmp / "coordinator"
        run(
            [str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
            coordinator,
            env,
        )
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "stage"], coordinator, env)
        pids = {
            name: stack.enter_context(prefect_worker(name, tmp / name, env, tmp / f"{name}.log"))
            for name in names[1:]
        }
        yield {"tmp": tmp, "env": env, "uri": uri, "coordinator": coordinator, "pids": pids}


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def run_grid_command(setup: dict[str, Any], *targets: str) -> subprocess.Popen[str]:
    """README, Cluster: the one command that runs the grid."""
    command = [str(BIN / "sop"), "repro", *targets, "--params", "demo/params.yaml", "--pool", POOL]
    return subprocess.Popen(
        command,
        cwd=setup["coordinator"],
        env=setup["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-5000:]
    return output


def worker_logs(setup: dict[str, Any]) -> dict[str, str]:
    tmp: Path = setup["tmp"]
    return {name: (tmp / f"{name}.log").read_text(errors="replace") for name in setup["pids"]}


def lock_outs(path: Path) -> dict[str, Any]:
    stages = yaml.safe_load(path.read_text())["stages"]
    return {name: stage.get("outs") for name, stage in stages.items()}


def final_repro_lines(output: str) -> list[str]:
    """The coordinator's output after the grid: its final fetch and `dvc repro`."""
    lines = output.splitlines()
    ends = [i for i, line in enumerate(lines) if re.search(r"grid: \d+/\d+ done", line)]
    return lines[ends[-1] + 1 :]


def grid_stages(output: str) -> list[str]:
    found = re.findall(r"submitted (\S+) \(run ", output)
    assert found, output[-3000:]
    return sorted(set(found))


def nested_stage_runs(uri: str, output: str) -> list[dict[str, str]]:
    import mlflow

    parent = re.search(r"MLflow parent run (\w+)", output)
    assert parent, output[-3000:]
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, filter_string=f"tags.mlflow.parentRunId = '{parent.group(1)}'"
    )
    return [{**r.data.tags, "status": r.info.status} for r in runs]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_demo_grid_on_three_workers_in_three_clones(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=3) as setup:
        output = finish(run_grid_command(setup), timeout=1700)
        logs = worker_logs(setup)
        # The coordinator started again: the workers restore every stage, and run none.
        again = finish(run_grid_command(setup), timeout=900)
        later = {name: log[len(logs[name]) :] for name, log in worker_logs(setup).items()}
        nested = nested_stage_runs(setup["uri"], output)  # while the MLflow server is up
    assert grid_stages(again) == grid_stages(output)
    assert not [s for log in later.values() for s in RAN.findall(log)]
    on_pool = grid_stages(output)
    assert len(on_pool) == 16
    ran = [stage for log in logs.values() for stage in RAN.findall(log)]
    for stage in on_pool:  # each grid stage ran exactly once, on some worker
        said = [line for line in output.splitlines() if stage in line]
        assert ran.count(stage) == 1, (stage, said)
    assert sum(1 for log in logs.values() if RAN.search(log)) >= 2  # the work was shared
    final = final_repro_lines(output)
    assert not [s for line in final for s in RAN.findall(line) if s in on_pool]
    assert sorted(s for line in final for s in RESTORED.findall(line)) == on_pool
    coordinator: Path = setup["coordinator"]
    # Cell by cell, every output as `make demo` recorded it serially (demo/dvc.lock); the
    # report's differs, as it holds the ResNet cells only.
    outs = lock_outs(coordinator / "demo" / "dvc.lock")
    committed = lock_outs(REPO / "demo" / "dvc.lock")
    assert sorted(set(outs) - set(committed)) == []
    del outs["report"]
    assert outs == {name: committed[name] for name in outs}
    finished = [r["dvc.stage"] for r in nested if r["status"] == "FINISHED" and "dvc.stage" in r]
    for stage in [*on_pool, "report"]:
        assert stage in finished, (stage, finished)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_worker_killed_mid_finetune_loses_nothing(tmp_path: Path) -> None:
    """`sop repro --workers 2` on one machine; the worker fine-tuning the cell is SIGKILLed
    with its stage processes a few steps in; the other worker finishes it."""
    project = tmp_path / "project"
    project.mkdir()
    snapshot(project)
    (project / "demo" / "dvc.lock").unlink()  # as above: nothing up to date by the lock
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    target = f"evaluate@{KILLED_CELL}"
    command = [str(BIN / "sop"), "repro", target, "--params", "demo/params.yaml", "--workers", "2"]
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    logs = project / ".sop" / "workers"
    victim = wait_for_training(logs, f"finetune@{KILLED_CELL}", timeout=900)
    kill_tree(worker_pid(victim), signal.SIGKILL)
    output = finish(process, timeout=900)
    assert f"lost finetune@{KILLED_CELL}" in output
    survivor = next(p for p in logs.glob("w*.log") if p.stem != victim)
    assert f"Running stage 'finetune@{KILLED_CELL}'" in survivor.read_text(errors="replace")
    expected = lock_outs(REPO / "demo" / "dvc.lock")
    got = lock_outs(project / "demo" / "dvc.lock")
    for stage in (f"finetune@{KILLED_CELL}", target):
        assert got[stage] == expected[stage], stage


def worker_pid(name: str) -> int:
    """The `prefect worker start ... --name <host>-<name>` process."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        if "worker" in words and "--name" in words:
            named = words[words.index("--name") + 1]
            if named.endswith(f"-{name}"):
                return int(proc.name)
    raise AssertionError(f"no worker process named *-{name}")


def wait_for_training(logs: Path, stage: str, timeout: float) -> str:
    """The worker (w0, w1) whose log shows ``stage`` a few training steps in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in logs.glob("w*.log"):
            log = path.read_text(errors="replace")
            started = log.find(f"Running stage '{stage}'")
            if started >= 0 and log.count("step/s", started) + log.count("s/step", started) >= 5:
                return path.stem
        time.sleep(1)
    raise AssertionError(f"no worker trained {stage} within {timeout} s")
