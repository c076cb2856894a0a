"""Slow tier: flows report to a real Prefect server when PREFECT_API_URL is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


# prefect_api: a real server per module (tests/conftest.py).


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
