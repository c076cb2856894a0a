"""Real servers on 127.0.0.1 for tests.

- :class:`FileServer`, for download tests: serves a folder, honours Range requests, and
  misbehaves once on request (drop the connection mid-file, answer 500, send wrong bytes, or
  hold the request until the test releases it).
- :func:`prefect_server` and :func:`mlflow_server`: ``prefect server start`` and
  ``mlflow server``, each with its own database in a temp folder (fixtures in conftest.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BIN = Path(sys.executable).parent


class FileServer:
    """Faults are consumed one per request: "drop" (a third of the body, then the connection
    closes), "500", "corrupt" (the full length, one byte changed: only a checksum can tell) and
    "hang" (sets ``held``, waits for ``release`` before answering normally)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.faults: list[str] = []
        self.requests: list[tuple[str, str | None]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                fault = server.faults.pop(0) if server.faults else None
                target = server.folder / path
                if fault == "hang":
                    server.held.set()
                    server.release.wait(timeout=120)
                if fault == "500":
                    self.send_error(500)
                    return
                if not target.is_file():
                    self.send_error(404)
                    return
                body = target.read_bytes()
                if fault == "corrupt" and body:
                    middle = len(body) // 2
                    body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[start : start + (len(body) - start) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()  # a held request must not keep shutdown() waiting
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was healthy")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not healthy at {url} after {timeout:.0f} s")
        time.sleep(0.5)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@contextmanager
def _serving(
    command: list[str], env: dict[str, str], health: str, what: str, log: Path
) -> Iterator[None]:
    """Run a server in its own process group (its workers stop with it); output to ``log``."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            try:
                _wait_healthy(health, process, what, timeout=120)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; its log: {log.read_text()[-2000:]}") from None
            yield
        finally:
            stop_group(process)


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with its own home (database); yields the API URL."""
    port = free_port()
    # The scheduler every few seconds, not every minute: a test sees a cron's runs at once.
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "3",
    }
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _serving(command, env, f"{api}/health", "prefect server", home / "server.log"):
        yield api


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1: sqlite backend and served artifacts under ``folder``;
    yields the tracking URI."""
    port = free_port()
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    uri = f"http://127.0.0.1:{port}"
    with _serving(command, env, f"{uri}/health", "mlflow server", folder / "server.log"):
        yield uri
