"""pipeline/views.py without a browser: the plot templates dvc.yaml names, and the narrow
metrics table (the browser tests are in test_browser_views.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import views
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]


def test_every_template_a_dvc_yaml_names_is_written_by_sop_stages() -> None:
    for dvc_yaml in (REPO / "dvc.yaml", REPO / "demo" / "dvc.yaml"):
        named = set(re.findall(r"(?m)^\s*template: (\S+)", dvc_yaml.read_text()))
        assert named, dvc_yaml
        assert named <= set(views.templates()), dvc_yaml
        for name in named:
            assert (dvc_yaml.parent / views.TEMPLATE_DIR / f"{name}.json").is_file()


def test_results_colour_by_init_and_keep_fraction_one_inside_the_frame() -> None:
    by_init = views.templates()["sop_by_init"]["encoding"]
    assert by_init["color"]["field"] == "init"
    assert by_init["x"]["scale"]["domain"][1] > 1.0  # a point at fraction 1.0 is whole
    for template in views.templates().values():
        assert template["encoding"]["y"]["scale"] == {"domain": [0, 1]}  # one shared IoU axis
        assert template["usermeta"]["embedOptions"]["renderer"] == "svg"  # text in the DOM


def test_the_metrics_table_is_narrow_and_aligned(tmp_path: Path) -> None:
    folder = tmp_path / "evaluate" / "landcoverai"
    folder.mkdir(parents=True)
    wide = {f"test_iou_class{i}": 0.5 for i in range(30)}
    (folder / "a-sop-0.25-s0.json").write_text(json.dumps({**wide, "test_miou": 0.123456}))
    (folder / "a-random-1.0-s0.json").write_text(json.dumps({"test_miou": 0.5, "best_epoch": 3}))
    table = views.metrics_table(tmp_path / "evaluate", ["test_miou", "best_epoch"], precision=3)
    lines = table.splitlines()
    assert lines[0].split() == ["file", "test_miou", "best_epoch"]
    assert lines[1].split() == ["landcoverai/a-random-1.0-s0", "0.500", "3"]
    assert lines[2].split() == ["landcoverai/a-sop-0.25-s0", "0.123", "-"]
    assert len({len(line) for line in lines}) == 1  # right-aligned columns end together
    assert max(len(line) for line in lines) < 80


def test_no_metrics_files_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no metrics files"):
        views.metrics_table(tmp_path, ["test_miou"])


@pytest.mark.parametrize("profile", ["", "demo"])
def test_each_fine_tuning_cell_is_drawn_once_in_its_dataset_and_backbones_chart(
    profile: str,
) -> None:
    import yaml

    folder = REPO / profile
    params = yaml.safe_load((folder / "params.yaml").read_text())
    grid = params["finetune"]
    expected = {
        f"plots/finetune/{dataset}/{model}-{float(fraction)}-s{seed}.csv"
        for dataset in grid["datasets"]
        for model in grid["models"]
        for fraction in params["data"]["label_fractions"]
        for seed in grid["seeds"]
    }
    charts = [
        (name, spec)
        for entry in yaml.safe_load((folder / "dvc.yaml").read_text())["plots"]
        for name, spec in entry.items()
        if spec.get("template") == "sop_curves_by_init"
    ]
    drawn = [path for _, spec in charts for path in spec["y"]]
    assert sorted(drawn) == sorted(expected)  # every cell, and each once
    for name, spec in charts:
        dataset, backbone = name.removeprefix("val_miou, ").split()
        for path, field in spec["y"].items():
            assert field == "val_miou"
            assert path.startswith(f"plots/finetune/{dataset}/{backbone}-"), (name, path)
