"""Servers ``sop`` runs in the foreground (``sop mlflow-ui``, ``sop prefect-ui``).

The port is checked before the URL is announced: a port in use is a one-line error naming
``--port``. The server runs in its own session (process group) with all its workers; SIGINT,
SIGTERM or SIGHUP to ``sop``, or ``sop`` leaving any other way but SIGKILL, stops that whole
group: SIGTERM, then SIGKILL for what is left after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from pipeline.errors import ParamsError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 10.0  # how long a server's group gets to stop on SIGTERM before SIGKILL


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host``:``port`` fails now (another server listens there)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ParamsError(f"--host {host}: not an address of this machine ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind: a port in TIME_WAIT after a previous server is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return True
    return False


def check_port(host: str, port: int) -> None:
    """A one-line error naming ``--port`` when ``port`` is taken on ``host``."""
    if port_in_use(host, port):
        raise ParamsError(
            f"--port {port}: {host}:{port} is already in use (another server is running "
            "there?); stop it, or pick a free port with --port"
        )


def browsable(host: str) -> str:
    """The name a browser reaches a server bound to ``host`` by: this machine's name for a
    wildcard address (which no browser can open), ``host`` itself otherwise."""
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After the command name (in parentheses): state, ppid, pgrp.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def stop_group(process: subprocess.Popen[bytes], grace_s: float = GRACE_S) -> None:
    """SIGTERM to ``process``'s group, SIGKILL to what is left of it after ``grace_s``."""
    pgid = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()  # reaps the leader; the others are reaped by init
            if not group_members(pgid):
                return
            time.sleep(0.1)
    process.poll()


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def serve(command: Sequence[str], env: Mapping[str, str], announce: str) -> int:
    """Run ``command`` in its own process group after printing ``announce``; its exit code, or
    128 + the signal that stopped ``sop``. The group is stopped whatever happens."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    process = None
    try:
        process = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        print(announce, flush=True)
        return process.wait()
    except _Stop as stop:
        return 128 + stop.signum
    finally:
        # Signals during the stop must not interrupt it.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if process is not None:
            stop_group(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def terminate_as_interrupt() -> None:
    """SIGTERM (or SIGHUP) handled as Ctrl-C: the ``finally`` blocks and exit handlers run, so
    the servers a command started (the stage host, Prefect's temporary server) stop with it
    rather than outliving it."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
