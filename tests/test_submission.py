"""LoveDA's test-server submission: the zip holds one PNG per Test image, named by its official
id at the zip's root, single-channel uint8 in the server's 0..6 (mask value - 1, never
no-data); `sop predict --loveda-submission`; the predict stages exist for LoveDA cells only."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor, nn
from typer.testing import CliRunner

from pipeline import definition, layout
from pipeline.cli import app
from pipeline.config import load_params
from pipeline.errors import DataError
from pipeline.models.inits import Normalisation
from pipeline.models.segmenters import create_segmenter
from pipeline.models.weights import save_encoder
from pipeline.predict import Predictor, cell_weights, load_predictor, predict_image
from pipeline.submission import (
    extracted_folders,
    loveda_test_images,
    server_predictor,
    write_submission,
    write_zip,
)
from tests.test_predict import demo_cell

REPO = Path(__file__).resolve().parents[1]
CLASSES = 8  # LoveDA's: 0 no-data, 1 background ... 7 agriculture
# Test images: official layout, disjoint Urban and Rural ids; one at LoveDA's 1024x1024, one
# smaller than the model's window.
TEST_IMAGES = {("Urban", "4191"): (1024, 1024), ("Urban", "4192"): (40, 56),
               ("Rural", "5166"): (96, 130)}  # fmt: skip
VAL_IMAGE = ("Urban", "3514")  # labelled: never in the submission
LOVEDA_CELL = "loveda-resnet_demo-random-0.25-0"


class ByColour(nn.Module):
    """Raw pixels in, known classes out: class R % 8 scores 10 and class 1 + G % 7 scores 5,
    so where R % 8 is LoveDA's no-data (0) the server's class is G % 7."""

    def forward(self, images: Tensor) -> Tensor:
        red, green = images[:, 0].long(), images[:, 1].long()
        logits = torch.zeros(images.shape[0], CLASSES, *images.shape[-2:])
        logits.scatter_add_(1, (red % 8)[:, None], torch.full_like(logits[:, :1], 10.0))
        logits.scatter_add_(1, (1 + green % 7)[:, None], torch.full_like(logits[:, :1], 5.0))
        return logits


def expected_values(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """What the server must get for ``ByColour``: mask value - 1, no-data replaced."""
    red, green = image[..., 0].astype(int) % 8, image[..., 1].astype(int) % 7
    return np.where(red == 0, green, red - 1).astype(np.uint8)


def write_png(path: Path, pixels: npt.NDArray[np.uint8]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def loveda_test_set(root: Path, largest: bool = True) -> dict[str, npt.NDArray[np.uint8]]:
    """Extracted Test.zip and Val.zip in LoveDA's layout under the download stage's folder,
    with its source.json; the Test images by id (without the 1024 one unless ``largest``)."""
    raw = layout.raw_dir(root, "loveda")
    rng = np.random.default_rng(0)
    images = {}
    for (domain, image_id), (height, width) in TEST_IMAGES.items():
        if height == 1024 and not largest:
            continue
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        write_png(raw / "extracted" / "Test" / "Test" / domain / "images_png" / f"{image_id}.png",
                  pixels)  # fmt: skip
        images[image_id] = pixels
    val = raw / "extracted" / "Val" / "Val" / VAL_IMAGE[0]
    write_png(val / "images_png" / f"{VAL_IMAGE[1]}.png", np.zeros((32, 32, 3), np.uint8))
    write_png(val / "masks_png" / f"{VAL_IMAGE[1]}.png", np.ones((32, 32), np.uint8))
    sources = [{"folder": f"data/raw/loveda/extracted/{split}"} for split in ("Val", "Test")]
    (raw / layout.SOURCE_FILE).write_text(json.dumps({"dataset": "loveda", "sources": sources}))
    return images


def read_zip(path: Path) -> dict[str, Image.Image]:
    with zipfile.ZipFile(path) as archive:
        return {name: Image.open(io.BytesIO(archive.read(name))) for name in archive.namelist()}


# --- the zip -----------------------------------------------------------------------------------


def test_the_zip_has_the_official_names_and_values(tmp_path: Path) -> None:
    images = loveda_test_set(tmp_path)
    found = loveda_test_images(extracted_folders(tmp_path))
    assert [i.id for i in found] == ["4191", "4192", "5166"]
    predictor = Predictor(ByColour(), Normalisation.raw(), CLASSES, window=128, overlap=0.25)
    out = write_submission(predictor, found, tmp_path / "sub.zip", progress=False)
    members = read_zip(out)
    assert sorted(members) == sorted(f"{i}.png" for i in images)  # at the root, no folders
    for image_id, pixels in images.items():
        png = members[f"{image_id}.png"]
        assert png.format == "PNG"
        assert png.mode == "L"  # single-channel, 8 bits
        values = np.asarray(png)
        assert values.dtype == np.uint8
        assert values.shape == pixels.shape[:2]
        assert values.max() <= 6
        assert np.array_equal(values, expected_values(pixels)), image_id
    assert (expected_values(images["4191"]) == 6).any()  # agriculture is written as 6
    assert list(tmp_path.glob("sub.zip.*")) == []  # nothing left beside it


def test_no_data_is_never_predicted_and_classes_shift_down_by_one() -> None:
    predictor = Predictor(ByColour(), Normalisation.raw(), CLASSES, window=32)
    image = np.zeros((32, 32, 3), np.uint8)  # R % 8 == 0: no-data wins the plain argmax
    image[..., 1] = 3  # second choice: class 4 (water), server value 3
    assert (predict_image(predictor, image) == 0).all()
    assert (predict_image(server_predictor(predictor), image) == 4).all()


def test_an_interrupted_submission_leaves_no_zip(tmp_path: Path) -> None:
    loveda_test_set(tmp_path, largest=False)
    found = loveda_test_images(extracted_folders(tmp_path))
    calls: list[int] = []

    def fails_on_the_second_image(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return np.ones(pixels.shape[:2], np.int64)

    with pytest.raises(RuntimeError, match="device lost"):
        write_zip(tmp_path / "sub.zip", found, fails_on_the_second_image, progress=False)
    assert list(tmp_path.glob("sub.zip*")) == []
    write_zip(tmp_path / "sub.zip", found, lambda p: np.ones(p.shape[:2], np.int64), False)
    assert sorted(read_zip(tmp_path / "sub.zip")) == ["4192.png", "5166.png"]


def test_a_segmenter_of_another_class_table_and_missing_test_images_are_named(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataError, match="5-class segmenter; LoveDA's has 8"):
        server_predictor(Predictor(nn.Conv2d(3, 5, 1), Normalisation.raw(), 5, 32))
    with pytest.raises(DataError, match=r"source\.json: missing; run the download stage"):
        extracted_folders(tmp_path)
    val = tmp_path / "Val" / "Urban"
    write_png(val / "images_png" / "1.png", np.zeros((8, 8, 3), np.uint8))
    write_png(val / "masks_png" / "1.png", np.ones((8, 8), np.uint8))
    with pytest.raises(DataError, match="no LoveDA Test"):
        loveda_test_images([tmp_path])
    for domain in ("Urban", "Rural"):  # one id in both domains: one name in the zip
        write_png(
            tmp_path / "Test" / domain / "images_png" / "7.png", np.zeros((8, 8, 3), np.uint8)
        )
    with pytest.raises(DataError, match="has its id"):
        loveda_test_images([tmp_path])


# --- `sop predict --loveda-submission` -----------------------------------------------------------


def loveda_cell(root: Path) -> None:
    """A resnet_demo LoveDA cell as its finetune stage leaves it (random weights)."""
    (root / "params.yaml").write_text(
        "finetune:\n  models: [resnet_demo-random]\n  input_size: 64\n  batch_size: 4\n"
    )
    folder = root / "models" / "finetune" / "loveda" / "resnet_demo-random-0.25-s0"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_encoder(create_segmenter("resnet_demo", CLASSES, 64), folder / layout.BEST_WEIGHTS_FILE)
    record = {"dataset": "loveda", "backbone": "resnet_demo", "init": "random"}
    (folder / layout.RUN_FILE).write_text(json.dumps(record))


def test_sop_predict_writes_the_submission_of_a_loveda_cell(tmp_path: Path) -> None:
    loveda_cell(tmp_path)
    images = loveda_test_set(tmp_path, largest=False)  # a real segmenter on CPU: small ones
    out = tmp_path / "submission.zip"
    result = CliRunner().invoke(app, [
        "predict", LOVEDA_CELL, "--loveda-submission", str(out), "--overlap", "0.5",
        "--params", str(tmp_path / "params.yaml"), "--set", "compute.device=cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    params = load_params(tmp_path / "params.yaml")
    predictor, _ = load_predictor(cell_weights(LOVEDA_CELL, tmp_path), params, tmp_path, 0.5, 4,
                                  "cpu")  # fmt: skip
    members = read_zip(out)
    assert sorted(members) == sorted(f"{i}.png" for i in images)
    for image_id, pixels in images.items():
        values = np.asarray(members[f"{image_id}.png"])
        logits = predict_image(server_predictor(predictor), pixels)
        assert np.array_equal(values, logits - 1)
        assert values.max() <= 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--loveda-submission: landcoverai-resnet_demo-random-0.25-0 is a landcoverai cell"),
        (["scene.tif"], "--loveda-submission: landcoverai-resnet_demo-random-0.25-0 is a"),
    ],
)
def test_a_cell_of_another_dataset_is_refused_in_one_line(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    demo_cell(tmp_path)
    out = tmp_path / "submission.zip"
    result = CliRunner().invoke(app, [
        "predict", "landcoverai-resnet_demo-random-0.25-0", *extra, "--loveda-submission",
        str(out), "--params", str(tmp_path / "params.yaml"),
    ])  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert not out.exists()


def test_rasters_with_the_submission_flag_or_neither_are_refused(tmp_path: Path) -> None:
    loveda_cell(tmp_path)
    for args, message in (
        (["scene.tif", "--loveda-submission", "s.zip"], "--loveda-submission: predicts"),
        ([], "give rasters and --out"),
        (["--loveda-submission", "s.zip", "--preview"], "drop --probabilities and --preview"),
        (["--loveda-submission", "s.zip", "--probabilities"], "the zip holds class maps only"),
    ):
        result = CliRunner().invoke(
            app, ["predict", LOVEDA_CELL, *args, "--params", str(tmp_path / "params.yaml")]
        )
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert message in result.output


# --- the predict stages --------------------------------------------------------------------------


def stage_names(project: Path) -> list[str]:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return sorted(stage.name for stage in repo.index.stages)


def project_with(tmp_path: Path, datasets: list[str]) -> Path:
    """A copy of the repository's definition whose paper grid fine-tunes ``datasets``."""
    project = tmp_path / "project"
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__py*"))
    (project / "demo").mkdir()
    for name in ("dvc.yaml", "params.yaml", "demo/dvc.yaml", "demo/params.yaml"):
        shutil.copy(REPO / name, project / name)
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["finetune"]["datasets"] = datasets
    (project / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    (project / ".dvc").mkdir()
    (project / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    return project


def test_sop_stages_makes_a_predict_stage_for_each_loveda_cell_and_no_other(
    tmp_path: Path,
) -> None:
    project = project_with(tmp_path, ["landcoverai", "loveda"])
    runner = CliRunner()
    assert runner.invoke(app, ["stages", "--project", str(project)]).exit_code == 0
    names = stage_names(project)
    predicts = [n for n in names if n.startswith("predict@")]
    loveda_cells = [n.removeprefix("finetune@") for n in names if n.startswith("finetune@loveda-")]
    assert len(loveda_cells) == 30  # 10 models x 3 fractions x 1 seed
    assert sorted(predicts) == sorted(f"predict@{cell}" for cell in loveda_cells)
    assert (project / "demo" / "dvc.yaml").read_text() == (REPO / "demo" / "dvc.yaml").read_text()

    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["finetune"]["datasets"] = ["landcoverai"]
    (project / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    assert runner.invoke(app, ["stages", "--project", str(project)]).exit_code == 0
    names = stage_names(project)
    assert not [n for n in names if n.startswith("predict")]
    assert [n for n in names if n.startswith("finetune@landcoverai-")]
    assert "predict:" not in (project / "dvc.yaml").read_text()


def test_the_paper_grid_has_predict_stages_and_the_demo_none() -> None:
    paper = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    demo = yaml.safe_load((REPO / "demo" / "dvc.yaml").read_text())["stages"]
    assert paper["predict"]["matrix"]["dataset"] == [definition.SUBMITTED_DATASET]
    assert "predict" not in demo
    assert "loveda" not in load_params(REPO / "demo" / "params.yaml").finetune.datasets


def test_the_predict_stage_writes_the_cells_zip_at_its_layout_path(tmp_path: Path) -> None:
    from pipeline.flows.finetune import Cell
    from pipeline.flows.predict import predict_flow

    loveda_cell(tmp_path)
    images = loveda_test_set(tmp_path, largest=False)
    params = load_params(tmp_path / "params.yaml", ["compute.device=cpu", "compute.progress=false"])
    cell = Cell("loveda", "resnet_demo-random", 0.25, 0)
    out = predict_flow.fn(cell, params, tmp_path)
    assert out == layout.submission_path(tmp_path, cell)
    assert out == tmp_path / "submissions" / "loveda" / "resnet_demo-random-0.25-s0.zip"
    weights = cell_weights(LOVEDA_CELL, tmp_path)
    predictor, _ = load_predictor(weights, params, tmp_path, 0.0, 4, "cpu")  # window_overlap
    members = read_zip(out)
    assert sorted(members) == sorted(f"{i}.png" for i in images)
    for image_id, pixels in images.items():
        expected = predict_image(server_predictor(predictor), pixels) - 1
        assert np.array_equal(np.asarray(members[f"{image_id}.png"]), expected)
