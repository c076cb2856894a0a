"""The warm stage host: a stage command runs in a forked child, as if it ran itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.stagehost import HOST_ENV, exit_code, stage_host

SCRIPT = """
import os, sys
from pathlib import Path
from pipeline.stagehost import run_in_host


def main() -> None:
    code = run_in_host(Path(sys.argv[0]), sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    print("args", sys.argv[1:], "cwd", os.getcwd(), "var", os.environ.get("SOME_VAR"))
    print("host", os.environ.get("SOP_STAGE_HOST"), "pid", os.getpid())
    print("on stderr", file=sys.stderr)
    if sys.argv[1] == "sleep":
        Path(sys.argv[2]).write_text(str(os.getpid()))
        import time
        time.sleep(60)
    if sys.argv[1] == "raise":
        raise RuntimeError("the stage failed")
    if sys.argv[1] == "mlflow":  # the host opened this store before forking
        import mlflow
        client = mlflow.MlflowClient(sys.argv[2])
        run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
        client.log_metric(run.info.run_id, "stage", float(sys.argv[3]))
        print("run", run.info.run_id)
        raise SystemExit(0)
    if sys.argv[1] == "frozen":  # what the collector leaves alone in the stage
        import gc
        print("frozen", gc.get_freeze_count())
        raise SystemExit(0)
    if sys.argv[1] == "prefect":  # the API URL Prefect will use in the stage
        from prefect.settings import get_current_settings
        print("api", get_current_settings().api.url)
        raise SystemExit(0)
    if sys.argv[1] == "spawn":  # as the tile stage's process pool does
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print("spawned in", pool.apply(os.getcwd))
        raise SystemExit(0)
    raise SystemExit(int(sys.argv[1]))


if __name__ == "__main__":
    main()
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "stages" / "probe.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


@pytest.fixture
def host(tmp_path: Path) -> Iterator[str]:
    with stage_host(tmp_path / "host", preload=("json",), wait=True) as address:
        yield address


def command(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


def environment(address: str) -> dict[str, str]:
    return {**os.environ, HOST_ENV: address, "SOME_VAR": "from the command"}


def test_a_stage_runs_in_the_host_with_the_commands_args_cwd_env_and_streams(
    script: Path, host: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        command(script, "3", "b"),
        cwd=elsewhere,
        env=environment(host),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3
    assert f"args ['3', 'b'] cwd {elsewhere} var from the command" in done.stdout
    # The host removes its variable from the stage's environment: it ran there, not here.
    assert "host None" in done.stdout
    assert "on stderr" in done.stderr


def test_a_stage_that_raises_exits_1_with_its_traceback(script: Path, host: str) -> None:
    done = subprocess.run(
        command(script, "raise"), env=environment(host), capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "RuntimeError: the stage failed" in done.stderr


def test_without_a_host_listening_the_stage_runs_in_its_own_process(
    script: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        command(script, "0"),
        env=environment(str(tmp_path / "nobody.sock")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert f"host {tmp_path / 'nobody.sock'}" in done.stdout


def test_killing_the_command_kills_its_stage(script: Path, host: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "stage.pid"
    client = subprocess.Popen(
        command(script, "sleep", str(pid_file)), env=environment(host), stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.05)
    stage = int(pid_file.read_text())
    assert stage != client.pid
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{stage}").exists():
        assert time.monotonic() < deadline, "the stage outlived its command"
        time.sleep(0.05)


def test_stopping_the_host_removes_its_socket_and_variable(tmp_path: Path) -> None:
    with stage_host(tmp_path / "host", preload=(), wait=True) as address:
        assert os.environ[HOST_ENV] == address
        assert Path(address).exists()
    assert HOST_ENV not in os.environ
    assert not Path(address).exists()


def test_exit_codes_follow_the_shell() -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 128 + signal.SIGKILL


def test_a_stage_spawning_processes_from_a_relative_path_works(
    script: Path, host: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, os.path.relpath(script, elsewhere), "spawn"],
        cwd=elsewhere,
        env=environment(host),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"spawned in {elsewhere}" in done.stdout
    assert "host None" in done.stdout


def test_stages_use_the_mlflow_store_the_host_opened(script: Path, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the database, as the parent run does
    with stage_host(tmp_path / "host", preload=("mlflow",), mlflow_uri=uri, wait=True) as address:
        stages = [
            subprocess.Popen(
                command(script, "mlflow", uri, str(value)),
                env=environment(address),
                stdout=subprocess.PIPE,
                text=True,
            )
            for value in (1, 2, 3)
        ]
        outputs = [stage.communicate()[0] for stage in stages]
    assert [stage.returncode for stage in stages] == [0, 0, 0]
    client = mlflow.MlflowClient(uri)
    for value, output in zip((1, 2, 3), outputs, strict=True):
        assert "host None" in output
        run_id = output.split("run ")[-1].strip()
        assert client.get_run(run_id).data.metrics["stage"] == value


def test_a_stage_started_before_the_host_listens_runs_in_its_own_process(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host is still importing (a slow module): the stage does not wait for it.
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(30)\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    with stage_host(tmp_path / "host", preload=("slow_module",)) as address:
        started = time.monotonic()
        done = subprocess.run(
            command(script, "0"), env=environment(address), capture_output=True, text=True
        )
        assert time.monotonic() - started < 20
    assert done.returncode == 0
    assert f"host {address}" in done.stdout  # ran here, with the variable still set


def test_the_hosts_preloaded_heap_is_frozen_out_of_a_stages_collections(
    script: Path, host: str
) -> None:
    # A collection in the stage that walked the host's heap would copy every page it touched.
    done = subprocess.run(
        command(script, "frozen"), env=environment(host), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split("frozen ")[1].split()[0]) > 1000


def test_a_stage_reads_prefects_settings_from_its_own_environment(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host imports Prefect before the server it will use is up (sop repro starts it first).
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with stage_host(tmp_path / "host", preload=("prefect",), wait=True) as address:
        env = {**environment(address), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
        done = subprocess.run(command(script, "prefect"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "api http://127.0.0.1:9/api" in done.stdout


def test_the_watcher_wakes_when_the_stage_exits() -> None:
    import selectors

    from pipeline.stagehost import _register_exit

    child = os.fork()
    if child == 0:
        os._exit(0)
    selector = selectors.DefaultSelector()
    try:
        poll = _register_exit(selector, child)
        if poll is not None:
            pytest.skip("no pidfd_open here: the watcher polls instead")
        # Only the child's exit can make the pidfd readable; the timeout is a guard.
        assert selector.select(timeout=30)
    finally:
        os.waitpid(child, 0)
        for key in list(selector.get_map().values()):
            os.close(key.fd)
        selector.close()
