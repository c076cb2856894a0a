from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    Params,
    load_params,
    params_from_mapping,
    params_to_yaml,
)
from pipeline.config_data import SourceParams
from pipeline.data.subsets import fraction_column
from pipeline.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", [REPO / "params.yaml", REPO / "demo" / "params.yaml"])
def test_shipped_params_files_are_valid(path: Path) -> None:
    params = load_params(path)
    assert params.data.tiling_for("landcoverai").tile_size == 512
    assert sorted(params.data.label_fractions) == [0.25, 0.5, 1.0]


def test_root_params_are_the_paper_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    # The file spells out the schema's defaults, nothing else.
    assert params.data.source("landcoverai") == SourceParams()
    dumped, default = params.model_dump(), Params().model_dump()
    for section in (dumped, default):
        section["data"].pop("sources")
        section["data"].pop("tiling")
    assert dumped == default
    for dataset in params.data.datasets:
        assert params.data.tiling_for(dataset) == Params().data.tiling_for(dataset)
    assert (params.pretrain.source_size, params.pretrain.subimage_size) == (224, 112)
    assert params.pretrain.variants() == [(112, 0.0), (112, 0.4), (56, 0.0), (56, 0.4)]
    assert params.finetune.datasets == ["landcoverai", "loveda", "deepglobe"]
    assert {m.split("-")[1] for m in params.finetune.models} == {
        "random",
        "imagenet",
        "lvd142m",
        "gassl",
        "seco",
        "ssl4eo",
        "satlas",
        "sop",
    }
    assert params.finetune.backbones() == ["vits14", "resnet50"]
    assert params.pretrain.focal_alpha is None
    assert params.finetune.input_size % 14 == 0


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("data:\n  tilesize: 256\n", "data.tilesize", "unknown key"),
        ("data:\n  tiling:\n    landcoverai: {remainder: overlap}\n", "data", "must be 'drop'"),
        ("data:\n  datasets: [potsdam]\n", "data", "unknown dataset(s) ['potsdam']"),
        ("data:\n  custom:\n    mine: {images: x, masks: y}\n", "data.custom.mine", "go together"),
        ("data:\n  custom:\n    loveda: {images: x}\n", "data.custom", "built-in dataset"),
        ("data:\n  split_fractions: [0.5, 0.5]\n", "data.split_fractions", "summing to 1"),
        ("bogus: 1\n", "bogus", "unknown key"),
        ("pretrain:\n  epochs: '3'\n", "pretrain.epochs", "valid integer"),
        (
            "data:\n  label_fractions: [1.0, 1.5]\n",
            "data.label_fractions[1]",
            "less than or equal to 1",
        ),
        ("data:\n  label_fractions: [0.0]\n", "data.label_fractions[0]", "greater than 0"),
        (
            "pretrain:\n  source_size: 224\n  subimage_sizes: [112, 280]\n",
            "pretrain.subimage_sizes",
            "must not be larger than its source",
        ),
        (
            "pretrain:\n  backbones: [resnet50]\n  subimage_sizes: [60]\n",
            "pretrain.subimage_sizes",
            "not a multiple of 8 (resnet50)",
        ),
        (
            "pretrain:\n  backbones: [vits14, resnet50]\n  subimage_sizes: [64]\n",
            "pretrain.subimage_sizes",
            "not a multiple of 14 (vits14)",
        ),
        (
            "pretrain:\n  backbones: [resnet_demo]\n",
            "pretrain",
            "set pretrain.init: none",
        ),
        ("pretrain:\n  color_jitters: [0.0, 1.5]\n", "pretrain.color_jitters[1]", "less than 1"),
        ("pretrain:\n  subimage_sizes: [56, 56]\n", "pretrain.subimage_sizes", "listed twice"),
        (
            "finetune:\n  models: [vits14-seco]\n",
            "finetune.models",
            "no seco weights for vits14; inits for it: ['random', 'sop', 'lvd142m']",
        ),
        ("finetune:\n  models: [vits14-moco]\n", "finetune.models", "unknown init 'moco'"),
        ("finetune:\n  models: [vit-sop]\n", "finetune.models", "want <backbone>-<init>"),
        (
            "finetune:\n  models: [vits14-sop-28-0.0]\n",
            "finetune.models",
            "names no pretext variant",
        ),
        (
            "finetune:\n  models: [resnet_demo-sop]\n",
            "finetune.models",
            "needs resnet_demo in pretrain.backbones",
        ),
        ("finetune:\n  seeds: [0, 0]\n", "finetune.seeds", "listed twice"),
        (
            "finetune:\n  models: [vits14-random]\n  backbone_input_size: {vits14: 128}\n",
            "finetune.backbone_input_size",
            "not a multiple of 14 (vits14)",
        ),
        (
            "finetune:\n  backbone_input_size: {vit_huge: 126}\n",
            "finetune.backbone_input_size",
            "unknown backbone vit_huge",
        ),
        ("compute:\n  devices: 0\n", "compute.devices", "positive number of processes"),
        ("finetune:\n  input_size: 450\n", "finetune.input_size", "not a multiple of 14"),
        (
            "finetune:\n  models: [resnet50-sop]\n  input_size: 500\n",
            "finetune.input_size",
            "not a multiple of 32",
        ),
        ("pretrain:\n  backbones: [vitb]\n", "pretrain.backbones[0]", "Input should be"),
        (
            "data:\n  sources:\n    landcoverai:\n      md5: xyz\n",
            "data.sources.landcoverai.md5",
            "32 hex digits",
        ),
    ],
)
def test_bad_params_name_file_and_key_in_one_line(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert f"{key}: " in message
    assert fragment in message


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: -1\ndata:\n  workers: 0\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert "seed: " in message
    assert "data.workers: " in message


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data: [unclosed\n")
    with pytest.raises(
        ParamsError, match=r"params\.yaml: line 2: not valid YAML \(expected ',' or '\]'"
    ):
        load_params(path)
    with pytest.raises(ParamsError, match=r"x\.yaml: file not found"):
        load_params(tmp_path / "x.yaml")


def test_overrides_apply_on_top_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "pretrain:\n  epochs: 10\n")
    params = load_params(path, ["pretrain.epochs=3", "data.label_fractions=[1.0, 0.1]"])
    assert params.pretrain.epochs == 3
    assert params.data.label_fractions == [1.0, 0.1]
    with pytest.raises(ParamsError, match=r"pretrain\.nope: unknown key"):
        load_params(path, ["pretrain.nope=1"])
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        load_params(path, ["pretrain.epochs"])


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "seed: 7\n"))
    again = load_params(write(tmp_path, params_to_yaml(params)))
    assert again == params
    assert yaml.safe_load(params_to_yaml(params))["seed"] == 7


def test_fraction_column_names() -> None:
    assert fraction_column(0.25) == "in_frac_0.25"
    assert fraction_column(1.0) == "in_frac_1"
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fraction_column(1.5)


def test_a_backbone_can_train_for_its_own_number_of_epochs() -> None:
    params = params_from_mapping(
        {
            "pretrain": {
                "backbones": ["resnet_demo", "vit_tiny_demo"],
                "init": "none",
                "epochs": 20,
                "backbone_epochs": {"vit_tiny_demo": 30},
            },
            "finetune": {"models": ["resnet_demo-random"]},
        }
    )
    assert params.pretrain.epochs_of("vit_tiny_demo") == 30
    assert params.pretrain.epochs_of("resnet_demo") == 20
    with pytest.raises(ParamsError, match=r"backbone_epochs: \['vits14'\] not in pretrain"):
        params_from_mapping(
            {
                "pretrain": {"backbones": ["resnet50"], "backbone_epochs": {"vits14": 30}},
                "finetune": {"models": ["resnet50-random"]},
            }
        )


def test_a_backbone_can_train_at_its_own_input_size() -> None:
    params = params_from_mapping(
        {
            "finetune": {
                "models": ["resnet_demo-random", "vit_tiny_demo-random"],
                "input_size": 128,  # not a multiple of 14: the ViT has its own
                "backbone_input_size": {"vit_tiny_demo": 126},
            },
        }
    )
    assert params.finetune.input_size_of("vit_tiny_demo") == 126
    assert params.finetune.for_backbone("resnet_demo").input_size == 128
    assert params.finetune.for_backbone("vit_tiny_demo").input_size == 126
