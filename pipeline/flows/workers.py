"""``sop repro --workers N``: the cluster set-up of the README on one machine.

A Prefect server on 127.0.0.1 (unless ``PREFECT_API_URL`` names one), the ``gpu`` process
pool, the ``stage`` deployment from prefect.yaml, and N ``prefect worker start`` processes,
each with its own checkout: a git worktree under ``.sop/workers/`` at this commit (with this
checkout's uncommitted changes applied), sharing this project's DVC cache, its data stages'
outputs hard-linked from this checkout (each machine tiles once), pinned to one GPU when the
machine has them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from pipeline import layout
from pipeline.errors import PipelineError
from pipeline.flows.grid import GridStage
from pipeline.flows.gridstage import CHECKOUT_ENV, dvc_cache_dir, dvc_env

WORKERS_DIR = "workers"
POOL = "gpu"
# Workers ask for work every second (Prefect's default is 10 s: most of a short stage).
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@contextmanager
def _background(
    command: list[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group, output to ``log``; stopped (with its children) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            _stop(process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise PipelineError(f"the Prefect server at {url} did not start; its log: {log}")


@contextmanager
def prefect_server(state: Path) -> Iterator[str]:
    """``PREFECT_API_URL`` if set, else a Prefect server on 127.0.0.1 for this run."""
    preset = os.environ.get("PREFECT_API_URL")
    if preset:
        yield preset
        return
    port = str(_free_port())
    api = f"http://127.0.0.1:{port}/api"
    command = [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", port]
    log = state / "prefect-server.log"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with _background(command, os.environ, log) as process:
        _wait_healthy(f"{api}/health", process, log)
        os.environ["PREFECT_API_URL"] = api  # for the workers and stages started meanwhile
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                try:
                    yield api
                finally:
                    from prefect.logging.handlers import APILogWorker

                    APILogWorker.drain_all(timeout=5)  # the last log lines, while it is up
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def deploy_stage_flow(checkout: Path, pool: str) -> None:
    """Create the process pool if missing, and deploy ``stage`` from prefect.yaml."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    command = [_bin("prefect"), "--no-prompt", "deploy", "--name", "stage", "--pool", pool]
    result = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PipelineError(f"`prefect deploy --name stage` failed: {result.stdout[-500:]}")


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PipelineError(f"`git {' '.join(args)}` failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def worktree(checkout: Path, path: Path) -> Path:
    """A worktree of ``checkout`` at ``path``, at its HEAD plus its uncommitted changes."""
    if not (path / ".git").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(checkout, "worktree", "add", "--force", "--detach", str(path), "HEAD")
    else:
        _git(path, "checkout", "--force", "--detach", _git(checkout, "rev-parse", "HEAD").strip())
    changes = _git(checkout, "diff", "HEAD", "--binary", "--", ".", ":(exclude)*dvc.lock")
    if changes:
        _git(path, "apply", "--whitespace=nowarn", stdin=changes)
    return path


def seed_data(project: Path, other: Path, stages: Mapping[str, GridStage], data: list[str]) -> None:
    """Hard-link the data stages' outputs of ``project`` into the worker's ``other`` project
    with this project's dvc.lock: DVC finds them up to date there and never tiles again."""
    for name in data:
        for out in stages[name].outs:
            source, target = project / out, other / out
            if not source.exists() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, copy_function=os.link)
            else:
                os.link(source, target)
    lock = project / layout.LOCK_FILE
    if lock.is_file():
        shutil.copyfile(lock, other / lock.name)


def gpu_slots(count: int) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` per worker: one GPU each while there are GPUs, else none."""
    listing = shutil.which("nvidia-smi")
    found = 0
    if listing:
        result = subprocess.run([listing, "-L"], capture_output=True, text=True, check=False)
        found = sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))
    if found and count > found:
        raise PipelineError(f"--workers {count}: this machine has {found} GPUs, one per worker")
    return [str(i) if found else None for i in range(count)]


def worker_env(checkout: Path, gpu: str | None, threads: int | None) -> dict[str, str]:
    env = dvc_env({CHECKOUT_ENV: str(checkout), "PYTHONPATH": str(checkout), **WORKER_ENV})
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    env.pop("SOP_STAGE_HOST", None)
    return env


@contextmanager
def local_workers(
    project: Path,
    stages: Mapping[str, GridStage],
    data: list[str],
    count: int,
    threads: int | None = None,
    pool: str = POOL,
) -> Iterator[list[Path]]:
    """``count`` workers on ``pool``, each in its worktree; stopped on exit."""
    checkout = Path(_git(project, "rev-parse", "--show-toplevel").strip())
    relative = project.resolve().relative_to(checkout.resolve())
    cache = dvc_cache_dir(project)
    state = layout.state_dir(checkout) / WORKERS_DIR
    deploy_stage_flow(checkout, pool)
    host = socket.gethostname()
    with ExitStack() as stack:
        paths = []
        for index, gpu in enumerate(gpu_slots(count)):
            path = worktree(checkout, state / f"w{index}")
            other = path / relative
            subprocess.run(
                [sys.executable, "-m", "dvc", "cache", "dir", "--local", cache],
                cwd=other,
                env=dvc_env(),
                check=True,
                capture_output=True,
            )
            seed_data(project, other, stages, data)
            name = f"{host}-w{index}"
            command = [
                _bin("prefect"),
                "worker",
                "start",
                "--pool",
                pool,
                "--name",
                name,
                "--type",
                "process",
                "--limit",
                "1",
            ]
            env = worker_env(path, gpu, threads)
            stack.enter_context(_background(command, env, state / f"w{index}.log"))
            print(f"worker {name}: {path} (GPU {gpu if gpu is not None else 'none'})", flush=True)
            paths.append(path)
        yield paths
