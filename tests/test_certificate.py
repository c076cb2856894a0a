"""The machine a dvc.lock certifies: recorded beside it, compared with the running one."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from pipeline.certificate import CERTIFICATE_FILE, fingerprint, record, recorded
from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_the_fingerprint_holds_what_decides_the_floating_point_bits() -> None:
    here = fingerprint()
    assert here["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert here["torch_threads"] == torch.get_num_threads()
    assert here["cpu"]


def test_a_recorded_machine_matches_itself_and_another_is_named(tmp_path: Path) -> None:
    assert recorded(tmp_path) is None
    record(tmp_path)
    assert recorded(tmp_path) == fingerprint()
    params = ["certificate", "--params", str(tmp_path / "params.yaml"), "--check"]
    assert CliRunner().invoke(app, params).exit_code == 0
    other = {**fingerprint(), "torch_cpu_capability": "AVX2"}
    (tmp_path / CERTIFICATE_FILE).write_text(json.dumps(other))
    result = CliRunner().invoke(app, params)
    assert result.exit_code == 1
    assert "is not the kind" in result.output
    assert "certified 'AVX2'" in result.output
    assert CliRunner().invoke(app, params[:-1]).exit_code == 0  # without --check: a report


def test_a_broken_certificate_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / CERTIFICATE_FILE).write_text("{not json")
    result = CliRunner().invoke(app, ["certificate", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert f"{tmp_path / CERTIFICATE_FILE}: not JSON" in result.output


def test_the_demo_carries_its_certificate() -> None:
    certified = recorded(REPO / "demo")
    assert certified is not None
    assert set(certified) == set(fingerprint())
