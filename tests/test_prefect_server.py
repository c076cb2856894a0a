"""Slow tier: flows report to a real Prefect server when PREFECT_API_URL is set."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("prefect server did not become healthy on 127.0.0.1")
            time.sleep(1)
        yield api
    finally:
        server.terminate()
        server.wait(30)


def test_stage_command_reports_to_the_server(prefect_api: str, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "synthetic:\n  scenes: 1\n  height: 1024\n  width: 1024\n"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    result = subprocess.run(
        [str(BIN / "sop"), "synth", "demo.zip"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Starting temporary server" not in result.stderr + result.stdout
    request = urllib.request.Request(
        f"{prefect_api}/flow_runs/filter",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.load(response)
    assert [(r["name"], r["state_type"]) for r in runs] == [("synthesize-demo.zip", "COMPLETED")]
