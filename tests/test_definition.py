"""One pipeline definition: code deps are each stage's imports, and the demo's is derived."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import definition
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "dvc.yaml"
DEMO = ROOT / "demo" / "dvc.yaml"
# The flow module each stage entry runs (what its main() imports).
FLOW_OF = {
    "download": "pipeline.flows.data",
    "tile": "pipeline.flows.data",
    "synth": "pipeline.flows.synth",
    "pretrain": "pipeline.flows.pretrain",
    "weights": "pipeline.flows.finetune",
    "finetune": "pipeline.flows.finetune",
    "evaluate": "pipeline.flows.finetune",
    "report": "pipeline.flows.report",
    "predict": "pipeline.flows.predict",
}


def stages(path: Path) -> dict[str, dict[str, Any]]:
    """Each stage's body (``do`` of a foreach), by name."""
    tree = yaml.safe_load(path.read_text())["stages"]
    return {name: body.get("do", body) for name, body in tree.items()}


def declared_code(body: dict[str, Any], prefix: str = "") -> set[str]:
    return {
        dep.removeprefix(prefix)
        for dep in body["deps"]
        if dep.removeprefix(prefix).startswith(("pipeline/", "stages/"))
    }


def test_dvc_yaml_and_the_demo_are_as_derived() -> None:
    stale = [str(d.path.relative_to(ROOT)) for d in definition.differences(ROOT)]
    assert not stale, f"{stale}: run `sop stages` and commit the result"


def test_a_missing_or_extra_code_dep_is_put_right() -> None:
    text = PAPER.read_text()
    dropped = text.replace("        - pipeline/config.py\n", "", 1)
    extra = text.replace(
        "      - stages/report.py\n", "      - stages/report.py\n      - pipeline/cli.py\n", 1
    )
    assert dropped != text
    assert extra != text
    assert definition.with_code_deps(dropped, ROOT) == text
    assert definition.with_code_deps(extra, ROOT) == text


@pytest.mark.parametrize("stage", sorted(FLOW_OF))
def test_every_module_a_stage_runs_is_declared(stage: str) -> None:
    """Import the stage's entry and its flow in a fresh interpreter: every package module
    loaded, config.py included, is one of the stage's deps."""
    body = stages(DEMO if stage == "synth" else PAPER)[stage]
    prefix = "../" if stage == "synth" else ""
    code = (
        "import json, sys, runpy, importlib\n"
        f"runpy.run_path({str(ROOT / 'stages' / f'{stage}.py')!r})\n"
        f"importlib.import_module({FLOW_OF[stage]!r})\n"
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()\n"
        "    if n.split('.')[0] == 'pipeline' and getattr(m, '__file__', None))))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    files = {Path(f).resolve().relative_to(ROOT).as_posix() for f in loaded}
    declared = declared_code(body, prefix)
    assert "pipeline/config.py" in files
    assert files <= declared, f"{stage} runs undeclared modules: {sorted(files - declared)}"
    assert f"stages/{stage}.py" in declared


def test_the_demo_is_the_paper_pipeline_plus_its_synthetic_archive() -> None:
    """Less the predict stage: the demo's grid has no LoveDA cell to submit."""
    paper, demo = stages(PAPER), stages(DEMO)
    paper.pop("predict")
    assert list(demo) == ["synth", *paper]
    for name, body in paper.items():
        mine = demo[name]
        assert mine["cmd"] == body["cmd"].replace("python stages/", "python ../stages/")
        assert declared_code(mine, "../") == declared_code(body)
        for key in ("params", "outs", "metrics", "plots", "foreach", "matrix"):
            assert mine.get(key) == body.get(key), (name, key)
    archive = {definition.DEMO_ARCHIVE, f"{definition.DEMO_ARCHIVE}.md5"}
    assert archive <= set(demo["download"]["deps"])
    assert {next(iter(o)) for o in demo["synth"]["outs"]} == archive


def test_sop_stages_check_names_a_stale_file_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    for folder in ("pipeline", "stages"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__py*"))
    (tmp_path / "demo").mkdir()
    shutil.copy(DEMO, tmp_path / "demo" / "dvc.yaml")
    stale = PAPER.read_text().replace("      - pipeline/config.py\n", "", 1)
    (tmp_path / "dvc.yaml").write_text(stale)
    runner = CliRunner()
    checked = runner.invoke(app, ["stages", "--project", str(tmp_path), "--check"])
    assert checked.exit_code == 1
    assert "dvc.yaml: not what `sop stages` derives" in checked.output
    assert (tmp_path / "dvc.yaml").read_text() == stale
    written = runner.invoke(app, ["stages", "--project", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert (tmp_path / "dvc.yaml").read_text() == PAPER.read_text()
