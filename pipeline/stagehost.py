"""A warm host that runs DVC stages by forking, so a grid imports its stack once.

Every stage is its own process (DVC runs a command per stage), and each one spent about 5 s
importing Python's share of the stack (torch, timm, Prefect, MLflow) before doing seconds of
work. ``sop repro`` starts this host first: one process that imports the stack and listens on
a unix socket named by ``SOP_STAGE_HOST``. A stage command (``python stages/x.py ...``) then
starts light (only ``pipeline.cli``), hands the host its arguments, working directory,
environment and its stdin/stdout/stderr (fd passing), and waits. The host forks a child that
runs the stage script exactly as the command would, writing straight to the command's output,
and reports the child's exit status, which the command exits with. If the command dies (DVC
interrupted), the child's whole process group is killed. Without the variable, or with the
host gone, a stage runs in its own process as before.

No threads: the accept loop forks one watcher per stage (which forks the stage and waits), so
nothing holds a lock when a stage is forked. The host never touches CUDA or torch's thread
pools, so forked stages start clean.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HOST_ENV = "SOP_STAGE_HOST"
PRELOAD = (
    "torch",
    "mlflow",
    "prefect",
    "pipeline.cli",
    "pipeline.flows.data",
    "pipeline.flows.finetune",
    "pipeline.flows.pretrain",
    "pipeline.flows.report",
    # What the first flow run, MLflow run, plot and exit of a process import lazily: imported
    # here once, so that no forked stage pays for it again (README, Performance).
    "prefect.flow_engine",
    "prefect.utilities.visualization",
    "mlflow.tracing.processor.otel",
    "git",
    "matplotlib.pyplot",
    "tabulate",
)
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
READY = "ready"


def _send_message(conn: socket.socket, payload: dict[str, Any], fds: Sequence[int]) -> None:
    body = json.dumps(payload).encode()
    socket.send_fds(conn, [_HEADER.pack(len(body))], list(fds))
    conn.sendall(body)


def _receive_exactly(conn: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from ``conn``; None if the other end closes first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _receive_message(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    (length,) = _HEADER.unpack(head)
    body = _receive_exactly(conn, length)
    if body is None:
        raise ConnectionError("the stage command went away mid-request")
    return json.loads(body), fds


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the killing signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# --- client: the stage command ------------------------------------------------------------


def run_in_host(script: Path, args: Sequence[str]) -> int | None:
    """Run ``script`` with ``args`` in the host named by ``SOP_STAGE_HOST``; its exit code.

    None when there is no host to run it (no variable, or nobody listening): run it here.
    """
    address = os.environ.get(HOST_ENV)
    if not address:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
    except OSError:
        conn.close()
        return None
    from pipeline.timing import STARTED_ENV, process_started

    env = {**os.environ, STARTED_ENV: repr(process_started())}
    env.pop(HOST_ENV)
    request = {"script": str(script.resolve()), "args": list(args), "cwd": os.getcwd(), "env": env}
    with conn:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _send_message(conn, request, [0, 1, 2])
        status = _receive_exactly(conn, _STATUS.size)
    if status is None:
        print(f"error: the stage host at {address} died", file=sys.stderr)
        return 1
    return int(_STATUS.unpack(status)[0])


# --- host ---------------------------------------------------------------------------------


def _run_stage(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked stage process: become the command, run the script, never return."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own group: killed as a whole if the command dies
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # Python's stream objects were made in the host; rebuild them on the new descriptors.
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        # multiprocessing's spawn starts its children in the directory it was imported in.
        import multiprocessing.process

        multiprocessing.process.ORIGINAL_DIR = request["cwd"]  # type: ignore[attr-defined]
        os.environ.clear()
        os.environ.update(request["env"])
        # Prefect read its settings from the host's environment when the host imported it; the
        # stage's (its API URL above all: the host may start before the server) replace them.
        prefect_context = sys.modules.get("prefect.context")
        if prefect_context is not None:
            prefect_context.refresh_global_settings_context()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.argv = [request["script"], *request["args"]]
        sys.path[0] = str(Path(request["script"]).resolve().parent)
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        with suppress(Exception):
            atexit._run_exitfuncs()
    finally:
        with suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _register_exit(selector: selectors.BaseSelector, child: int) -> float | None:
    """Register a pidfd of ``child`` (Linux 5.3+) with ``selector``; the poll interval to use:
    None (wait for an event) with one, 0.05 s without."""
    try:
        selector.register(os.pidfd_open(child), selectors.EVENT_READ)
    except (AttributeError, OSError):  # no pidfd_open: this platform or an older kernel
        return 0.05
    return None


def _watch(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """In a watcher forked per request: fork the stage, relay its status, never return."""
    try:
        child = os.fork()
        if child == 0:
            conn.close()
            _run_stage(request, fds)
        for fd in fds:
            os.close(fd)
        selector = selectors.DefaultSelector()
        selector.register(conn, selectors.EVENT_READ)
        # Woken the moment the stage exits (a pidfd turns readable), not at the next poll,
        # which would add half a poll interval to every stage.
        poll = _register_exit(selector, child)
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                with suppress(OSError):
                    conn.sendall(_STATUS.pack(exit_code(status)))
                break
            ready = [key.fileobj for key, _ in selector.select(timeout=poll)]
            # The command closes its end only by dying: take the stage down with it.
            if conn in ready and not conn.recv(1, socket.MSG_PEEK):
                with suppress(ProcessLookupError):
                    os.killpg(child, signal.SIGTERM)
                os.waitpid(child, 0)
                break
    finally:
        os._exit(0)


def warm_mlflow(uri: str) -> None:
    """Open MLflow's store for ``uri`` once, here: its schema check costs about a second per
    process. MLflow caches the store per URI, so forked stages find it ready; its pooled
    SQLite connections are closed first, as no connection may cross a fork."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from pipeline.tracking import open_client

    open_client(uri).search_experiments(max_results=1)
    for engine in getattr(SqlAlchemyStore, "_engine_map", {}).values():
        engine.dispose()


def serve(address: Path, preload: Sequence[str] = PRELOAD, mlflow_uri: str | None = None) -> None:
    """Import ``preload`` (and open ``mlflow_uri``'s store), listen at ``address`` and fork a
    watcher per stage, until SIGTERM."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # a headless host: no GUI backend probing
    for module in preload:
        importlib.import_module(module)
    if mlflow_uri:
        warm_mlflow(mlflow_uri)
    # The preloaded heap (millions of objects) out of the collector's reach: a forked stage's
    # collections would otherwise walk it, touching every page and copying it (copy-on-write).
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # watchers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address.unlink(missing_ok=True)
    listener.bind(str(address))
    listener.listen(64)
    print(READY, flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            try:
                request, fds = _receive_message(conn)
            except (OSError, ValueError, ConnectionError):
                conn.close()
                continue
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _watch(conn, request, fds)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        listener.close()
        address.unlink(missing_ok=True)


@contextmanager
def stage_host(
    directory: Path,
    preload: Sequence[str] = PRELOAD,
    mlflow_uri: str | None = None,
    wait: bool = False,
) -> Iterator[str]:
    """Start a host for this process's stage commands (``SOP_STAGE_HOST`` exported while it
    lives); yields its socket's path. Stops it on exit.

    Without ``wait`` it yields at once, while the host is still importing (seconds): a stage
    that starts before the host listens runs in its own process, so a repro with nothing to
    run does not wait for imports it will not use.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are short (108 bytes): a short name in a private temp dir if needed.
    address = directory / f"host-{os.getpid()}.sock"
    if len(str(address)) > 100:
        import tempfile

        address = Path(tempfile.mkdtemp(prefix="sop-")) / "host.sock"
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.stagehost",
            str(address),
            *([f"--mlflow={mlflow_uri}"] if mlflow_uri else []),
            *preload,
        ],
        stdout=subprocess.PIPE if wait else subprocess.DEVNULL,
        text=True,
    )
    if wait:
        assert process.stdout is not None
        if process.stdout.readline().strip() != READY:
            process.kill()
            raise RuntimeError(f"the stage host did not start (exit {process.wait()})")
        print(f"stage host ready in {time.perf_counter() - started:.1f} s: {address}")
    previous = os.environ.get(HOST_ENV)
    os.environ[HOST_ENV] = str(address)
    try:
        yield str(address)
    finally:
        if previous is None:
            os.environ.pop(HOST_ENV, None)
        else:
            os.environ[HOST_ENV] = previous
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        address.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m pipeline.stagehost SOCKET [--mlflow=URI] [MODULE ...]")
    # Exit at once: a SystemExit raised mid-import (the host preloads for seconds) lands in an
    # import-lock callback, which prints it as a traceback and goes on. Nothing here needs
    # unwinding: the parent unlinks the socket, and watchers and stages are processes of their own.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    uris = [a.split("=", 1)[1] for a in args[1:] if a.startswith("--mlflow=")]
    modules = [a for a in args[1:] if not a.startswith("--mlflow=")]
    serve(Path(args[0]), modules, uris[0] if uris else None)


if __name__ == "__main__":
    main()
