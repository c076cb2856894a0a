"""``sop mlflow-ui`` and ``sop prefect-ui``: a port in use is one line and a non-zero exit;
SIGTERM or SIGINT to ``sop`` stops the server's whole process group (its workers too).

The slow tier starts each server for real on a free port, waits until it answers HTTP, signals
``sop`` and reads /proc for what is left of the server's group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import servers
from tests.servers import BIN, free_port

STARTUP_LIMIT_S = 180.0  # guards against a hang, not a timing assertion
COMMANDS = {"mlflow-ui": "/health", "prefect-ui": "/api/health"}

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def sop_command(command: str, project: Path, port: int) -> list[str]:
    params = str(project / "params.yaml")
    return [str(BIN / "sop"), command, "--params", params, "--port", str(port)]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something listens on, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_browser_reaches_a_wildcard_bind_by_the_machines_name() -> None:
    assert servers.browsable("127.0.0.1") == "127.0.0.1"
    assert servers.browsable("0.0.0.0") == socket.gethostname()
    assert servers.browsable("::") == socket.gethostname()


def test_port_in_use_is_seen(taken_port: int) -> None:
    assert servers.port_in_use("127.0.0.1", taken_port)
    assert not servers.port_in_use("127.0.0.1", free_port())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_port_in_use_is_one_line_and_exit_2(
    command: str, taken_port: int, tmp_path: Path
) -> None:
    result = subprocess.run(
        sop_command(command, tmp_path, taken_port),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: --port {taken_port}: 127.0.0.1:{taken_port} is already in use (another "
        "server is running there?); stop it, or pick a free port with --port"
    )
    assert "http://" not in result.stdout  # no URL announced for a server that never ran


@needs_proc
def test_group_members_sees_a_group_and_its_end() -> None:
    process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(servers.group_members(process.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(servers.group_members(process.pid)) == 3
    finally:
        servers.stop_group(process, grace_s=10)
    assert servers.group_members(process.pid) == []


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_signal_to_sop_stops_the_servers_whole_group(
    command: str, sig: signal.Signals, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        sop = subprocess.Popen(
            sop_command(command, tmp_path, port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}{COMMANDS[command]}"
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while not _answers(url):
            assert sop.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        (server,) = _children(sop.pid)
        group = os.getpgid(server)
        assert group != os.getpgid(sop.pid)  # its own group, so that it can be stopped whole
        members = servers.group_members(group)
        assert server in members
        if command == "mlflow-ui":
            assert len(members) > 1, members  # its workers and job runner too
        else:  # its UI asks this server for the runs, not Prefect's default port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings") as answer:
                assert json.load(answer)["api_url"] == f"http://127.0.0.1:{port}/api"
        sop.send_signal(sig)
        assert sop.wait(STARTUP_LIMIT_S) == 128 + sig
    finally:
        servers.stop_group(sop)
    # The group's processes were reparented when the server's leader exited: give init a
    # moment to reap them, then nothing of the group may be alive.
    deadline = time.monotonic() + 30
    while servers.group_members(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers.group_members(group) == []
    assert not _answers(url)
    assert f"http://127.0.0.1:{port}" in log.read_text()
