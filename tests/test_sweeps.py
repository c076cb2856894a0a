"""The paper's open questions as sweeps: pretraining data scale (pretrain.image_fractions) and
cross-dataset transfer (pretrain.datasets): their params, runs, init names and report tables;
the slow tier runs both on the demo profile through DVC."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import layout
from pipeline.config import Params, params_from_mapping
from pipeline.errors import DataError, ParamsError
from pipeline.flows.finetune import weights_section
from pipeline.flows.pretrain import pretrain_flow, section_for
from pipeline.models.weights import WeightsError
from pipeline.sweeps import images_table, sweep_sections, transfer_table
from pipeline.train.pretrain import image_subset

REPO = Path(__file__).resolve().parents[1]


def sweep_params(**pretrain: Any) -> Params:
    return params_from_mapping(
        {
            "data": {"datasets": ["landcoverai", "loveda"]},
            "pretrain": {"backbones": ["resnet50"], "image_fractions": [0.25, 0.5], **pretrain},
            "finetune": {
                "models": ["resnet50-sop", "resnet50-sop-img0.25", "resnet50-sop-56-0.4"],
            },
        }
    )


# --- nested image subsets ------------------------------------------------------------------


def test_image_subsets_are_seeded_nested_and_sized() -> None:
    rows = np.arange(0, 300, 3)[::-1]  # any order of any row numbers
    subsets = {f: image_subset(rows, f, seed=0) for f in (0.25, 0.5, 1.0)}
    assert [len(s) for s in subsets.values()] == [25, 50, 100]
    assert set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0]) == set(rows)
    assert all((np.diff(s) > 0).all() for s in subsets.values())  # sorted, as the loader reads
    assert np.array_equal(image_subset(rows, 0.5, seed=0), subsets[0.5])
    assert not np.array_equal(image_subset(rows, 0.5, seed=1), subsets[0.5])
    assert len(image_subset(np.arange(3), 0.1, seed=0)) == 1  # ceil: never an empty share
    with pytest.raises(ValueError, match=r"image fraction lies in \(0, 1\], got 0"):
        image_subset(rows, 0.0, seed=0)


# --- params ----------------------------------------------------------------------------------


def test_the_sweeps_default_to_none() -> None:
    params = Params()
    assert (params.pretrain.image_fractions, params.pretrain.datasets) == ([], [])


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (
            {"pretrain": {"image_fractions": [0.5, 1.0]}},
            r"pretrain\.image_fractions: want shares below 1 \(every image is the plain sop\)",
        ),
        ({"pretrain": {"image_fractions": [0.5, 0.5]}}, r"pretrain\.image_fractions: listed"),
        (
            {"pretrain": {"image_fractions": [0.0]}},
            r"pretrain\.image_fractions\[0\]: .*greater than 0",
        ),
        (
            {"pretrain": {"datasets": ["landcoverai"]}},
            r"pretrain\.datasets: want datasets of data\.datasets .* other than pretrain\.dataset",
        ),
        (
            {"data": {"datasets": ["landcoverai"]}, "pretrain": {"datasets": ["loveda"]}},
            r"pretrain\.datasets: want datasets of data\.datasets \['landcoverai'\]",
        ),
        (
            {"finetune": {"models": ["resnet50-sop-img0.5"]}},
            r"finetune\.models: resnet50-sop-img0\.5 needs 0\.5 in pretrain\.image_fractions \[\]",
        ),
        (
            {"finetune": {"models": ["resnet50-sop-loveda"]}},
            r"finetune\.models: resnet50-sop-loveda needs loveda in pretrain\.datasets \[\]",
        ),
        (
            {"finetune": {"models": ["resnet50-sop-img0.50"]}},
            r"finetune\.models: .*written as Python prints it \(sop-img0\.5\)",
        ),
    ],
)
def test_sweep_params_errors_are_one_line_naming_the_parameter(
    tree: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParamsError, match=message) as caught:
        params_from_mapping(tree)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("root", [REPO, REPO / "demo"], ids=["paper", "demo"])
def test_no_sweep_stage_by_default(root: Path) -> None:
    """DVC renders a matrix over an empty list as no stage: the profiles' grids are as they
    were without the sweeps."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        groups = {stage.name.split("@")[0] for stage in repo.index.stages}
    assert "pretrain" in groups
    assert not groups & {"pretrain_images", "pretrain_transfer"}


def test_swept_inits_are_fine_tuned_by_listing_them() -> None:
    params = sweep_params(datasets=["loveda"])
    models = ["resnet50-sop-img0.5", "resnet50-sop-loveda"]
    f = params.finetune.model_copy(update={"models": models})
    assert Params.model_validate({**params.model_dump(), "finetune": f.model_dump()})


def test_a_variants_params_still_validate_with_every_sop_model_listed() -> None:
    """The pretrain job's params are read back (validated) in its process: narrowing the
    variant lists must not orphan an ablation or sweep model of finetune.models."""
    params = sweep_params()
    narrowed = params.for_pretext(56, 0.4)
    assert (narrowed.pretrain.main_variant, narrowed.pretrain.variants()) == (
        "56-0.4",
        [(56, 0.4), (56, 0.0), (112, 0.4), (112, 0.0)],
    )
    assert Params.model_validate(narrowed.model_dump(mode="json")) == narrowed


# --- what the runs read ----------------------------------------------------------------------


def test_the_main_runs_section_holds_no_sweep() -> None:
    """So a main pretrain stage's params, provenance and checkpoint key stay as they were."""
    plain = section_for(Params(), "resnet50")
    swept = section_for(sweep_params(datasets=["loveda"]), "resnet50")
    assert swept == plain | {"pretrain": swept["pretrain"]}
    assert "image_fractions" not in swept["pretrain"]
    assert "datasets" not in swept["pretrain"]
    assert "data" not in swept


def test_a_sweep_runs_section_names_its_point() -> None:
    params = sweep_params(datasets=["loveda"])
    images = section_for(params, "resnet50", image_fraction=0.25)
    assert images["pretrain"]["image_fraction"] == 0.25
    assert images["data"] == {"subset_seed": params.data.subset_seed}
    transfer = section_for(params, "resnet50", dataset="loveda")
    assert transfer["pretrain"]["dataset"] == "loveda"
    assert "image_fraction" not in transfer["pretrain"]


def test_a_swept_init_reads_no_pretext_variant() -> None:
    """Its run is named by the init (in the cmd); plain sop resolves the main variant."""
    params = sweep_params()
    assert "pretrain" not in weights_section(params, "resnet50-sop-img0.25")
    assert weights_section(params, "resnet50-sop")["pretrain"] == {"pretext_variant": "112-0.0"}


@pytest.mark.parametrize(
    ("subimage", "point", "message"),
    [
        (112, {"image_fraction": 0.3}, r"pretrain\.image_fractions: 0\.3 is not one of"),
        (112, {"dataset": "deepglobe"}, r"pretrain\.datasets: 'deepglobe' is not one of"),
        (56, {"image_fraction": 0.25}, r"sop-img0\.25: the sweeps pretrain the main pretext"),
    ],
)
def test_a_sweep_run_outside_the_params_names_the_parameter(
    tmp_path: Path, subimage: int, point: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        pretrain_flow.fn("resnet50", subimage, 0.0, sweep_params(), tmp_path, **point)


def test_the_weights_stage_names_the_sweep_stage_to_run(tmp_path: Path) -> None:
    from pipeline.flows.finetune import weights_flow

    with pytest.raises(WeightsError, match=r"dvc repro pretrain_images@resnet50-0\.25\)"):
        weights_flow.fn("resnet50-sop-img0.25", sweep_params(), tmp_path)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--image-fraction=0.3", r"pretrain\.image_fractions: 0\.3 is not one of \[0\.25, 0\.5\]"),
        ("--pretrain-dataset=loveda", r"pretrain\.datasets: 'loveda' is not one of \[\]"),
    ],
)
def test_sop_pretrain_runs_a_sweep_point_or_names_its_list(
    tmp_path: Path, option: str, message: str
) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(sweep_params().model_dump(mode="json")))
    result = CliRunner().invoke(
        app, ["pretrain", option, "--params", str(tmp_path / "params.yaml")]
    )
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split()))


# --- the report's tables -------------------------------------------------------------------


def results(*cells: tuple[str, str, float, float]) -> pd.DataFrame:
    """A results table: (dataset, init, label fraction, test mIoU) per cell; seed 0 unless the
    same cell repeats (then seeds 0, 1, ...)."""
    rows: list[dict[str, Any]] = []
    for dataset, init, fraction, miou in cells:
        seed = sum(
            (r["dataset"], r["init"], r["label_fraction"]) == (dataset, init, fraction)
            for r in rows
        )
        rows.append(
            {
                "dataset": dataset,
                "backbone": "resnet50",
                "init": init,
                "label_fraction": fraction,
                "seed": seed,
                "test_miou": miou,
            }
        )
    return pd.DataFrame(rows)


TABLE = results(
    ("landcoverai", "sop", 1.0, 0.60),
    ("landcoverai", "sop", 1.0, 0.70),  # a second seed: the table holds the mean
    ("landcoverai", "sop-img0.25", 1.0, 0.40),
    ("landcoverai", "sop-img0.5", 1.0, 0.50),
    ("landcoverai", "sop-56-0.4", 1.0, 0.10),  # an ablation: in neither sweep
    ("landcoverai", "random", 1.0, 0.20),
    ("landcoverai", "sop-loveda", 1.0, 0.55),
    ("loveda", "sop", 1.0, 0.30),
    ("loveda", "sop-loveda", 1.0, 0.35),
    ("loveda", "sop", 0.5, 0.25),  # no sweep at this fraction: no row in either table
)


def test_the_data_scale_table_puts_the_plain_sop_at_every_image() -> None:
    table = images_table(TABLE)
    assert list(table.columns) == [0.25, 0.5, 1.0]
    assert list(table.index) == [("landcoverai", "resnet50", 1.0)]
    assert table.loc[("landcoverai", "resnet50", 1.0)].tolist() == pytest.approx([0.4, 0.5, 0.65])


def test_the_transfer_matrix_is_pretraining_by_fine_tuning_dataset() -> None:
    table = transfer_table(TABLE, main_dataset="landcoverai")
    assert list(table.columns) == ["landcoverai", "loveda"]
    assert list(table.index) == [
        ("resnet50", 1.0, "landcoverai"),
        ("resnet50", 1.0, "loveda"),
    ]
    assert table.to_numpy().ravel().tolist() == pytest.approx([0.65, 0.30, 0.55, 0.35])
    unnamed = transfer_table(TABLE)  # unnamed: the cells' files do not record it
    assert unnamed.index.get_level_values("pretrained_on").tolist() == [
        "loveda",
        "pretrain.dataset",
    ]


def test_sweep_sections_render_tables_and_plots(tmp_path: Path) -> None:
    lines, plots = sweep_sections(TABLE, tmp_path)
    text = "\n".join(lines)
    assert "## Pretraining data scale" in text
    assert "| landcoverai | resnet50 | 100% | 0.400 | 0.500 | 0.650 |" in text
    assert "## Cross-dataset transfer" in text
    assert "| resnet50 | 100% | loveda | 0.550 | 0.350 |" in text
    assert "| resnet50 | 100% | pretrain.dataset | 0.650 | 0.300 |" in text
    assert [p.name for p in plots] == [
        "sweep_images_landcoverai_resnet50.png",
        "sweep_transfer_resnet50_1.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert f"![{plots[0].stem}]({plots[0].name})" in lines


def test_no_sweep_no_section(tmp_path: Path) -> None:
    plain = TABLE[~TABLE["init"].isin(["sop-img0.25", "sop-img0.5", "sop-loveda"])]
    assert sweep_sections(plain, tmp_path) == ([], [])
    assert list(tmp_path.iterdir()) == []


# --- slow tier: both sweeps on the demo profile through DVC ---------------------------------

OTHER = "fields"  # the second dataset: the test's own imagery (data.custom)


def write_custom_dataset(folder: Path) -> dict[str, str]:
    """Three synthetic scenes of two tiles each as PNG scene/mask pairs, a scene per split;
    returns its data.custom entry."""
    from PIL import Image

    from pipeline.synthetic.scene import synth_scene

    rng = np.random.default_rng(5)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for index, split in enumerate(("train", "val", "test")):
        image, mask = synth_scene(512, 1024, rng)
        Image.fromarray(image).save(folder / "images" / f"scene{index}.png")
        Image.fromarray(mask).save(folder / "masks" / f"scene{index}.png")
        (folder / "images" / f"{split}.txt").write_text(f"scene{index}\n")
    names = ["background", "building", "woodland", "water", "road"]
    (folder / "classes.yaml").write_text(yaml.safe_dump({"names": names}))
    return {
        "images": str(folder / "images"),
        "masks": str(folder / "masks"),
        "classes": str(folder / "classes.yaml"),
    }


def sweep_demo(project: Path, other: dict[str, str]) -> Path:
    """The demo profile, smallest: one backbone, one label fraction, one epoch, a share of the
    images and a second dataset; returns demo/."""
    for item in ("pipeline", "stages"):
        shutil.copytree(REPO / item, project / item, ignore=shutil.ignore_patterns("__pycache__"))
    demo = project / "demo"
    demo.mkdir()
    params = yaml.safe_load((REPO / "demo" / "params.yaml").read_text())
    params["synthetic"].update(scenes=2, height=1100, width=1200)
    data = params["data"]
    data.update(datasets=["landcoverai", OTHER], label_fractions=[1.0], custom={OTHER: other})
    data["sources"][OTHER] = {"url": None, "md5": None}
    data["tiling"][OTHER] = {"tile_size": 512, "remainder": "drop"}
    params["pretrain"].update(
        backbones=["resnet_demo"], epochs=1, batch_size=2, backbone_epochs={}, warmup_epochs=0
    )
    params["pretrain"].update(image_fractions=[0.5], datasets=[OTHER])
    models = ["resnet_demo-sop", "resnet_demo-sop-img0.5", f"resnet_demo-sop-{OTHER}"]
    params["finetune"].update(
        datasets=["landcoverai", OTHER], models=models, epochs=1, batch_size=2, input_size=64
    )
    params["finetune"]["warmup_epochs"] = 0
    params["finetune"]["sop_gate"] = False  # one epoch of pretraining learns no more than the prior
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "demo" / "dvc.yaml", demo / "dvc.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, timeout=60)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--subdir", "-q"], cwd=demo, check=True, timeout=120
    )
    return demo


def dvc(demo: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=demo,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout


def provenance(demo: Path, run: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (layout.pretrain_dir(demo, run) / layout.PROVENANCE_FILE).read_text()
    )
    return loaded


@pytest.mark.slow
def test_both_sweeps_run_on_the_demo_profile_and_render_their_tables(tmp_path: Path) -> None:
    demo = sweep_demo(tmp_path / "project", write_custom_dataset(tmp_path / OTHER))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sop"), "repro", "--params", "demo/params.yaml"],
        cwd=demo.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    stages = dvc(demo, "stage", "list", "--name-only").split()
    assert {"pretrain_images@resnet_demo-0.5", f"pretrain_transfer@resnet_demo-{OTHER}"} <= set(
        stages
    )
    # The share: half the main run's training tiles, of the same dataset; the transfer run: the
    # other dataset's. Both of the main pretext variant.
    main, share = provenance(demo, "resnet_demo-56-0.0"), provenance(demo, "resnet_demo-img0.5")
    assert share["train_tiles"] == -(-main["train_tiles"] // 2)
    assert (share["dataset"], share["params"]["pretrain"]["image_fraction"]) == ("landcoverai", 0.5)
    transfer = provenance(demo, f"resnet_demo-{OTHER}")
    assert (transfer["dataset"], transfer["pretext_variant"]) == (OTHER, "56-0.0")
    init = json.loads(
        layout.init_path(demo, f"resnet_demo-sop-{OTHER}").with_suffix(".json").read_text()
    )
    assert init["pretrain_provenance"]["encoder_sha256"] == transfer["encoder_sha256"]
    report = (layout.results_dir(demo) / "report.md").read_text()
    assert "## Pretraining data scale" in report
    assert "| landcoverai | resnet_demo | 100% | " in report
    assert "## Cross-dataset transfer" in report
    assert f"| resnet_demo | 100% | {OTHER} | " in report
    assert "| resnet_demo | 100% | landcoverai | " in report
    for png in ("sweep_images_landcoverai_resnet_demo.png", "sweep_transfer_resnet_demo_1.png"):
        assert (layout.results_dir(demo) / png).read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(layout.results_dir(demo) / layout.RESULTS_TABLE)
    assert len(table) == 2 * 3  # two datasets x three models x one fraction x one seed
    assert "up to date" in dvc(demo, "status")
    # Without the sweeps (the defaults): the same stages but theirs, every one still up to
    # date, so adding a sweep to a finished grid leaves that grid alone.
    params = yaml.safe_load((demo / "params.yaml").read_text())
    params["pretrain"].update(image_fractions=[], datasets=[])
    params["finetune"]["models"] = ["resnet_demo-sop"]
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    remaining = dvc(demo, "stage", "list", "--name-only").split()
    assert not [s for s in remaining if s.startswith(("pretrain_", "weights@resnet_demo-sop-"))]
    assert "up to date" in dvc(demo, "status")
