"""Servers the project starts listen on 127.0.0.1 unless a flag says otherwise, and the README
warns about that flag.

The project starts three: ``sop mlflow-ui`` (``--host``, default 127.0.0.1), the temporary
Prefect server a stage starts when no ``PREFECT_API_URL`` is set, and ``sop repro``'s warm stage
host (a unix socket, no TCP at all). Each is started for real and its process tree's listening
sockets are read from the kernel (``/proc``): what it binds, not what it prints. ``--host
0.0.0.0`` is seen binding every interface, so the check can tell the two apart.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.stagehost import stage_host
from tests.reliability.conftest import REPO
from tests.servers import BIN, FileServer, free_port, stop_group

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net"),
]

LISTEN = "0A"  # the TCP state in /proc/net/tcp{,6}
LOOPBACK = {"127.0.0.1", "::1"}
STARTUP_LIMIT_S = 120.0  # a guard against a hang, not a timing assertion


def process_tree(root_pid: int) -> set[int]:
    """``root_pid`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the second field after the command name in parentheses.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = set(), [root_pid]
    while pending:
        pid = pending.pop()
        tree.add(pid)
        pending.extend(children.get(pid, []))
    return tree


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_address: str) -> str:
    """/proc/net/tcp's host-order hex words as an IP address."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = _socket_inodes(pids)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in inodes:
                address, port = local.split(":")
                found.add((_address(address), int(port, 16)))
    return found


def test_the_proc_reader_sees_what_a_socket_binds() -> None:
    """The reader, checked against sockets this test binds itself (IPv4, IPv6, wildcard)."""
    me = {os.getpid()}
    with socket.socket() as local, socket.socket() as wildcard:
        local.bind(("127.0.0.1", 0))
        wildcard.bind(("0.0.0.0", 0))
        local.listen()
        wildcard.listen()
        expected = {("127.0.0.1", local.getsockname()[1]), ("0.0.0.0", wildcard.getsockname()[1])}
        assert expected <= listening(me)
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as six:
            try:
                six.bind(("::1", 0))
            except OSError:
                return  # no IPv6 loopback here
            six.listen()
            assert ("::1", six.getsockname()[1]) in listening(me)


# --- sop mlflow-ui -----------------------------------------------------------------------------


@contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in its own process group (its workers stop with it), output to ``log``."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop_group(process)


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> set[tuple[str, int]]:
    """The tree's listening sockets once one is on ``port``.

    The server's parent process binds before its workers start (MLflow's four take many
    seconds more), and the bound socket is what is under test: no need to wait for them.
    """
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        sockets = listening(process_tree(process.pid))
        if any(p == port for _, p in sockets):
            return sockets
        time.sleep(0.2)
    pytest.fail(f"nothing listened on port {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def mlflow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project for both runs: the first creates its MLflow store, the second finds it."""
    return tmp_path_factory.mktemp("project")


@pytest.mark.parametrize(
    ("flag", "bound"),
    [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")],
    ids=["default", "--host 0.0.0.0"],
)
def test_mlflow_ui_binds_loopback_unless_host_says_otherwise(
    flag: list[str], bound: str, mlflow_project: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [str(BIN / "sop"), "mlflow-ui", "--params", str(mlflow_project / "params.yaml")]
    log = tmp_path / "mlflow-ui.log"
    with started([*command, "--port", str(port), *flag], env, log) as process:
        sockets = wait_listening(process, port, log)
    assert {address for address, p in sockets if p == port} == {bound}
    assert f"MLflow UI on http://{bound}:{port}" in log.read_text()


# --- Prefect's temporary server ----------------------------------------------------------------


def test_a_stages_temporary_prefect_server_binds_loopback(tmp_path: Path) -> None:
    """A stage run without ``PREFECT_API_URL`` starts its own Prefect server: the download stage,
    held mid-request by the file server so the temporary server can be looked at while it runs."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "landcover.ai.v1.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    server = FileServer(mirror)
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(
        f"data:\n  sources:\n    landcoverai:\n      url: {server.url}/landcover.ai.v1.zip\n"
        "      md5: skip\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server.faults = ["hang"]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "download.py"), "landcoverai"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    announced = threading.Event()

    def drain() -> None:  # keeps the pipe from filling; notes the server's announcement
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Starting temporary server on" in line:
                announced.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        # The stage's request arrives only once its flow runs, i.e. its server is up.
        assert server.held.wait(STARTUP_LIMIT_S), "".join(output)[-3000:]
        assert announced.is_set(), "".join(output)[-3000:]
        match = re.search(r"Starting temporary server on http://([^:/]+):(\d+)", "".join(output))
        assert match is not None
        host, port = match.group(1), int(match.group(2))
        sockets = listening(process_tree(process.pid))
    finally:
        server.release.set()
        try:
            process.wait(STARTUP_LIMIT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            reader.join(10)
            server.close()
    assert host == "127.0.0.1"  # the API URL the stage's runs report to
    assert (host, port) in sockets
    assert {address for address, _ in sockets} <= LOOPBACK, sockets  # nothing else, nowhere else
    assert process.returncode == 0, "".join(output)[-3000:]


# --- the warm stage host -----------------------------------------------------------------------


def test_the_stage_host_listens_on_a_unix_socket_only(tmp_path: Path) -> None:
    with stage_host(tmp_path / "host", preload=(), wait=True) as address:
        assert stat.S_ISSOCK(Path(address).stat().st_mode)
        mine = process_tree(os.getpid())
        hosts = {
            pid
            for pid in mine
            if "pipeline.stagehost"
            in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        }
        assert hosts, "the stage host process was not found"
        assert listening(set().union(*(process_tree(pid) for pid in hosts))) == set()


# --- the README --------------------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize(
    ("section", "command"),
    [("Tracking (MLflow)", "sop mlflow-ui"), ("Orchestration (Prefect 3)", "prefect server start")],
)
def test_the_readme_warns_about_the_host_flag(section: str, command: str) -> None:
    """The section that shows the server's command warns that another host exposes it."""
    paragraphs = re.split(r"\n\s*\n", readme_section(section))
    warnings = [
        p
        for p in paragraphs
        if "--host" in p and "127.0.0.1" in p and "unauthenticated" in p and "expos" in p
    ]
    assert warnings, f"README.md, {section}: no paragraph warns about --host"
    assert command in readme_section(section)
