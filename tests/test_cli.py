from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import layout
from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
STAGE_COMMANDS = ["download", "tile", "pretrain"]


def test_help_lists_the_stage_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in [*STAGE_COMMANDS, "params", "synth", "mlflow-ui", "prefect-ui"]:
        assert command in result.output


@pytest.mark.parametrize("command", [*STAGE_COMMANDS, "params", "synth", "mlflow-ui", "prefect-ui"])
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_params_is_one_line_and_exit_2(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  subimage_sizes: [112, 280]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "params", "--params", str(params)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(params) in lines[0]
    assert "pretrain.subimage_sizes: the subimage (280) must not be larger" in lines[0]
    assert "Traceback" not in result.stderr


def test_params_prints_the_resolved_set(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("seed: 3\n")
    result = CliRunner().invoke(
        app, ["params", "--params", str(params), "--set", "pretrain.epochs=2"]
    )
    assert result.exit_code == 0, result.output
    assert "seed: 3" in result.output
    assert "epochs: 2" in result.output


def test_stage_entry_reports_errors_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  workers: 0\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "tile.py"), "landcoverai"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: data.workers: Input should be greater than 0 (got 0)"
    ]


def test_a_stage_runs_its_flow_without_heartbeats(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(
        "from pipeline.stage import stage_main\n"
        "def main() -> None:\n"
        "    from prefect.settings import get_current_settings\n"
        "    print('heartbeat', get_current_settings().flows.heartbeat_frequency)\n"
        "stage_main(main)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SOP_STAGE_HOST"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
    )
    assert "heartbeat None" in done.stdout


def test_pretext_says_per_run_whether_it_beat_the_position_prior(tmp_path: Path) -> None:
    layout.pretrain_metrics_dir(tmp_path).mkdir(parents=True)
    for name, val_iou in (("resnet_demo-56-0.0", 0.54), ("vit_tiny_demo-56-0.0", 0.46)):
        layout.pretrain_metrics_path(tmp_path, name).write_text(
            f'{{"val_iou": {val_iou}, "baseline_iou": 0.43}}'
        )
    params = str(tmp_path / "params.yaml")
    result = CliRunner().invoke(app, ["pretext", "--params", params])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "resnet_demo-56-0.0: val_iou 0.540 vs centred-box baseline 0.430 (+0.110): "
        "learned more than the position prior",
        "vit_tiny_demo-56-0.0: val_iou 0.460 vs centred-box baseline 0.430 (+0.030): "
        "did not beat the position prior by 0.05",
    ]
    strict = CliRunner().invoke(app, ["pretext", "--params", params, "--strict"])
    assert strict.exit_code == 1
    lenient = ["pretext", "--params", params, "--strict", "--min-margin", "0.02"]
    assert CliRunner().invoke(app, lenient).exit_code == 0


def test_pretext_without_pretrain_metrics_names_the_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pretext", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert f"{layout.pretrain_metrics_dir(tmp_path)}: no pretrain metrics" in result.output


def test_a_short_option_means_one_long_option_across_the_command_tree() -> None:
    """`-s` once meant both --set and --seed in one command: each short option now names one
    long option in every command that has it."""
    import re

    import click
    import typer.main

    meaning: dict[str, set[str]] = {}

    def walk(command: click.Command, path: str) -> None:
        seen: list[str] = []
        for param in command.params:
            names = [*param.opts, *param.secondary_opts]
            long = next((n for n in names if n.startswith("--")), param.name or "")
            for short in (n for n in names if re.fullmatch(r"-[A-Za-z]", n)):
                seen.append(short)
                meaning.setdefault(short, set()).add(long)
        assert len(seen) == len(set(seen)), f"{path}: a short option twice: {sorted(seen)}"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "sop")
    assert meaning, "no short options found: the walk saw no commands"
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
