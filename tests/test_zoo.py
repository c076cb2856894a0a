"""The zoo is the one table of backbones and inits: the schema and the registries read it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from pipeline import zoo
from pipeline.config import params_from_mapping
from pipeline.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def grid(backbone: str, init: str) -> dict[str, Any]:
    """The smallest params whose grid holds ``<backbone>-<init>`` at valid sizes."""
    pretext = zoo.input_multiple(backbone, pretext=True)
    segmentation = zoo.input_multiple(backbone, pretext=False)
    source = 4 * pretext * segmentation
    return {
        "pretrain": {
            "init": "pretrained" if zoo.BACKBONES[backbone].published_tag else "none",
            "backbones": [backbone],
            "source_size": source,
            "subimage_sizes": [source // 2],
        },
        "finetune": {"models": [f"{backbone}-{init}"], "input_size": 2 * segmentation},
    }


@pytest.mark.parametrize(
    ("backbone", "init"),
    [(b, name) for name, entry in zoo.INITS.items() for b in entry.backbones],
)
def test_every_init_of_every_backbone_is_a_valid_model(backbone: str, init: str) -> None:
    params = params_from_mapping(grid(backbone, init), source="zoo")
    assert params.finetune.models == [f"{backbone}-{init}"]


@pytest.mark.parametrize("backbone", sorted(zoo.BACKBONES))
def test_the_schema_checks_sizes_against_the_zoo_multiples(backbone: str) -> None:
    tree = grid(backbone, "random")
    multiple = zoo.input_multiple(backbone, pretext=False)
    tree["finetune"]["input_size"] = 2 * multiple + 1
    with pytest.raises(ParamsError, match=rf"not a multiple of {multiple} \({backbone}\)"):
        params_from_mapping(tree, source="zoo")


def test_an_init_its_backbone_lacks_is_refused_naming_the_ones_it_has() -> None:
    with pytest.raises(ParamsError, match=r"no lvd142m weights for resnet50; inits for it: \["):
        params_from_mapping({"finetune": {"models": ["resnet50-lvd142m"]}}, source="zoo")


def test_an_unknown_backbone_lists_the_zoo() -> None:
    with pytest.raises(ParamsError, match="resnet_demo"):
        params_from_mapping({"pretrain": {"backbones": ["vitb"]}}, source="zoo")


def test_model_names() -> None:
    assert zoo.split_model("resnet50-sop-56-0.0") == ("resnet50", "sop-56-0.0")
    assert zoo.base_init("sop-56-0.0") == "sop"
    assert zoo.sop_variant("sop", "112-0.0") == "112-0.0"
    assert zoo.sop_variant("sop-56-0.4", "112-0.0") == "56-0.4"
    assert zoo.pretext_variant(56, 0) == "56-0.0"
    with pytest.raises(ValueError, match="'sop-X': unknown SOP init; want sop, sop-<subimage>"):
        zoo.check_model("resnet50-sop-X")
    with pytest.raises(ValueError, match="unknown init 'sopx'"):
        zoo.check_model("resnet50-sopx")


@pytest.mark.parametrize(
    ("init", "parsed", "run", "stage"),
    [
        ("sop", zoo.SopInit(), "r-112-0.0", "pretrain@r-112-0.0"),
        ("sop-56-0.4", zoo.SopInit(variant="56-0.4"), "r-56-0.4", "pretrain@r-56-0.4"),
        ("sop-img0.25", zoo.SopInit(image_fraction=0.25), "r-img0.25", "pretrain_images@r-0.25"),
        ("sop-loveda", zoo.SopInit(dataset="loveda"), "r-loveda", "pretrain_transfer@r-loveda"),
        ("sop-my_set2", zoo.SopInit(dataset="my_set2"), "r-my_set2", "pretrain_transfer@r-my_set2"),
    ],
)
def test_sop_init_grammar(init: str, parsed: zoo.SopInit, run: str, stage: str) -> None:
    assert zoo.parse_sop(init) == parsed
    assert parsed.swept == (parsed.image_fraction is not None or parsed.dataset is not None)
    assert zoo.sop_run("r", init, "112-0.0") == run
    assert zoo.sop_stage("r", init, "112-0.0") == stage
    if parsed.swept:
        point = {"image_fraction": parsed.image_fraction, "dataset": parsed.dataset}
        assert zoo.sweep_init(**point) == init


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("sop-img1.0", r"0 < fraction < 1 .*every image is the plain sop"),
        ("sop-img-0.5", "unknown SOP init"),
        ("sop-img0.50", r"as Python prints it \(sop-img0\.5\)"),
        ("sop-img.5", r"as Python prints it \(sop-img0\.5\)"),
        ("sop-Loveda", "unknown SOP init"),
        ("sop-56", "unknown SOP init"),
        ("sop-", "not an SOP init"),
        ("random", "not an SOP init"),
    ],
)
def test_malformed_sop_inits_name_the_grammar(init: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zoo.parse_sop(init)


def test_a_sweep_point_is_one_of_its_two_kinds() -> None:
    with pytest.raises(ValueError, match="one of the two"):
        zoo.sweep_init()
    with pytest.raises(ValueError, match="one of the two"):
        zoo.sweep_init(image_fraction=0.5, dataset="loveda")


def test_the_paper_grid_is_every_paper_backbone_with_its_inits() -> None:
    expected = {
        f"{b}-{name}"
        for name, entry in zoo.INITS.items()
        for b in entry.backbones
        if zoo.BACKBONES[b].paper
    }
    assert set(zoo.PAPER_MODELS) == expected
    assert set(zoo.PAPER_BACKBONES) == {"vits14", "resnet50"}


def test_no_other_module_spells_a_backbone_or_init_table() -> None:
    """A backbone or init name as a dict key anywhere else in pipeline/ is a second table."""
    names = set(zoo.BACKBONES) | set(zoo.INITS)
    normalisations = {entry.normalisation for entry in zoo.INITS.values()}  # seco, ...
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name == "zoo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if keys & names and not keys <= normalisations:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_the_zoo_imports_nothing_heavy() -> None:
    tree = ast.parse((ROOT / "pipeline" / "zoo.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {
        "__future__",
        "re",
        "urllib",
        "collections",
        "dataclasses",
        "pathlib",
        "typing",
    }
