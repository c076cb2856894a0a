"""Each DVC stage declares exactly the params its flow reads (so DVC reruns what changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import Params, load_params
from pipeline.flows.finetune import Cell, evaluate_section, finetune_section, weights_section
from pipeline.flows.pretrain import section_for
from pipeline.flows.report import report_section
from pipeline.tracking import flatten

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
def test_pretrain_declares_the_params_it_reads(root: Path) -> None:
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["pretrain"]
    declared = set(stage["params"])
    params: Params = load_params(root / "params.yaml")
    subimage, jitter = params.pretrain.variants()[-1]
    variant = params.for_pretext(subimage, jitter)
    read = set(flatten(section_for(variant, params.pretrain.backbones[0])))
    # What the flow reads, in DVC's terms: the backbone and the pretext variant are the matrix
    # item (in the cmd), not params, and the compute section other than the device (precision)
    # does not change the result.
    read -= {"pretrain.backbone", "pretrain.subimage_size", "pretrain.color_jitter"}
    read = {k for k in read if not k.startswith("compute.") or k == "compute.device"}
    # Mappings keyed by backbone are declared whole: DVC needs every declared key in the file.
    whole = ("pretrain.weights_file", "pretrain.backbone_epochs")
    read = {next((w for w in whole if k.startswith(w)), k) for k in read}
    assert declared == read
    assert stage["matrix"] == {
        "backbone": "${pretrain.backbones}",
        "subimage": "${pretrain.subimage_sizes}",
        "jitter": "${pretrain.color_jitters}",
    }


SWEEPS = {
    "pretrain_images": ({"image_fraction": 0.5}, "fraction", "image_fractions", "--image-fraction"),
    "pretrain_transfer": ({"dataset": "loveda"}, "dataset", "datasets", "--dataset"),
}


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_the_sweep_stages_declare_the_params_they_read(root: Path, name: str) -> None:
    """A sweep's run of the main variant: its backbone, variant (the main one, in the cmd) and
    sweep point are not params; the data-scale run also reads the subsets' seed."""
    point, axis, listed, option = SWEEPS[name]
    stage = _stage(root, name)
    params: Params = load_params(root / "params.yaml")
    section = section_for(params, params.pretrain.backbones[0], **point)
    read = set(flatten(section)) - {
        "pretrain.backbone",
        "pretrain.subimage_size",
        "pretrain.color_jitter",
        f"pretrain.{next(iter(point))}",
    }
    read = {k for k in read if not k.startswith("compute.") or k == "compute.device"}
    whole = ("pretrain.weights_file", "pretrain.backbone_epochs")
    read = {next((w for w in whole if k.startswith(w)), k) for k in read}
    assert set(stage["params"]) == read
    assert stage["matrix"] == {"backbone": "${pretrain.backbones}", axis: f"${{pretrain.{listed}}}"}
    assert stage["cmd"].endswith(
        "stages/pretrain.py ${item.backbone} ${pretrain.subimage_sizes[0]} "
        f"${{pretrain.color_jitters[0]}} {option} ${{item.{axis}}}"
    )


def _stage(root: Path, name: str) -> dict[str, Any]:
    stage: dict[str, Any] = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][name]
    return stage.get("do", stage)  # foreach stages hold theirs under do


def _in_dvc_terms(section: dict[str, Any], item_keys: set[str]) -> set[str]:
    """Flattened params minus the stage's foreach/matrix items and the compute section other
    than the device (where training runs does not change what it computes)."""
    read = set(flatten(section)) - item_keys
    read = {k for k in read if not k.startswith("compute.") or k == "compute.device"}
    # Mappings keyed by init are declared whole: DVC needs every declared key in the file.
    return {k.split(".", 2)[0] + "." + k.split(".", 2)[1] if k.count(".") > 1 else k for k in read}


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
def test_downstream_stages_declare_the_params_they_read(root: Path) -> None:
    params: Params = load_params(root / "params.yaml")
    f = params.finetune
    cells = [
        Cell(f.datasets[0], model, params.data.label_fractions[0], f.seeds[0]) for model in f.models
    ]
    item = {"finetune.dataset", "finetune.model", "finetune.fraction", "finetune.seed"}
    weights_read: set[str] = set()
    for model in f.models:
        weights_read |= _in_dvc_terms(weights_section(params, model), {"finetune.model"})
    # An SOP model reads its pretext variant, which `sop` resolves from the two ablation lists.
    if "pretrain.pretext_variant" in weights_read:
        weights_read.remove("pretrain.pretext_variant")
        weights_read |= {"pretrain.subimage_sizes", "pretrain.color_jitters"}
    expected = {
        "weights": weights_read,
        "finetune": set().union(*(_in_dvc_terms(finetune_section(params, c), item) for c in cells)),
        "evaluate": set().union(*(_in_dvc_terms(evaluate_section(params, c), item) for c in cells)),
        "report": _in_dvc_terms(report_section(params), set()),
    }
    for name, read in expected.items():
        assert set(_stage(root, name)["params"]) == read, name


def test_the_predict_stage_declares_the_params_it_reads() -> None:
    """The paper grid's LoveDA cells (the demo has none, so no predict stage)."""
    from pipeline.flows.predict import predict_section

    params: Params = load_params(REPO / "params.yaml")
    item = {"finetune.dataset", "finetune.model", "finetune.fraction", "finetune.seed"}
    read = set().union(*(
        _in_dvc_terms(predict_section(params, Cell("loveda", model, fraction, seed)), item)
        for model in params.finetune.models
        for fraction in params.data.label_fractions
        for seed in params.finetune.seeds
    ))  # fmt: skip
    stage = _stage(REPO, "predict")
    assert set(stage["params"]) == read
    assert stage["matrix"] == {
        "dataset": ["loveda"],
        "model": "${finetune.models}",
        "fraction": "${data.label_fractions}",
        "seed": "${finetune.seeds}",
    }
    assert stage["cmd"].endswith(
        "stages/predict.py ${item.dataset} ${item.model} ${item.fraction} ${item.seed}"
    )
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in stage["params"]:
        node = tree
        for part in key.split("."):
            assert part in node, f"params.yaml lacks {key}: DVC would fail"
            node = node[part]


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
def test_the_grid_matrix_comes_from_params_and_reaches_the_commands(root: Path) -> None:
    for name in ("finetune", "evaluate"):
        stage = _stage(root, name)
        assert stage["matrix"] == {
            "dataset": "${finetune.datasets}",
            "model": "${finetune.models}",
            "fraction": "${data.label_fractions}",
            "seed": "${finetune.seeds}",
        }
        assert stage["cmd"].endswith(
            f"stages/{name}.py ${{item.dataset}} ${{item.model}} ${{item.fraction}} ${{item.seed}}"
        )
    assert _stage(root, "weights")["cmd"].endswith("stages/weights.py ${item}")


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
@pytest.mark.parametrize(
    "name",
    [
        "download",
        "tile",
        "pretrain",
        "pretrain_images",
        "pretrain_transfer",
        "weights",
        "finetune",
        "evaluate",
        "report",
    ],
)
def test_every_declared_param_is_in_the_params_file(root: Path, name: str) -> None:
    tree = yaml.safe_load((root / "params.yaml").read_text())
    stage = _stage(root, name)
    keys = [
        key.split("#")[0].strip().replace("${item}", dataset)
        for key in stage["params"]
        for dataset in tree["data"]["datasets"]
    ]
    for key in keys:
        node = tree
        for part in key.split("."):
            assert isinstance(node, dict), key
            assert part in node, f"{root / 'params.yaml'} lacks {key}: DVC would fail"
            node = node[part]


def test_pretraining_a_dataset_that_is_not_declared_names_the_parameter(tmp_path: Path) -> None:
    from pipeline.config import params_from_mapping
    from pipeline.errors import DataError
    from pipeline.flows.pretrain import pretrain_flow

    params = params_from_mapping({"data": {"datasets": ["loveda"]}})
    with pytest.raises(DataError, match=r"pretrain\.dataset: 'landcoverai' is not in data"):
        pretrain_flow.fn("vits14", 112, 0.0, params, tmp_path)


RUN_CACHED = ("pretrain", "weights", "finetune", "evaluate")


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
def test_every_stage_from_pretrain_on_can_enter_the_run_cache(root: Path) -> None:
    """DVC records a run only for a stage whose plain outputs are all cached and none persisted
    (metrics and plots may be `cache: false`): what lets a stage run on one worker be restored
    on every other."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if s.name.split("@")[0] in RUN_CACHED]
        assert {s.name.split("@")[0] for s in stages} == set(RUN_CACHED)
        blocking = [
            f"{stage.name}: {out.def_path}"
            for stage in stages
            for out in stage.outs
            if out.persist or not (out.use_cache or out.is_metric or out.is_plot)
        ]
    assert not blocking, f"outputs that keep a stage out of DVC's run-cache: {blocking}"
