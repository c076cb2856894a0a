"""`sop export`: an encoder that timm alone loads, and the hub layout with its model card.

The acceptance test: a timm-only load of the export (``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=dict(file=...))``, and ``local-dir:`` on the hub folder) reproduces the
pipeline encoder's outputs, for both demo backbones, from a pretrain run and from a cell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from typer.testing import CliRunner

from pipeline import layout
from pipeline.cli import app
from pipeline.data.catalog import CATALOG
from pipeline.export import hub_licence, resolve_source
from pipeline.models.backbones import create_backbone
from pipeline.models.segmenters import create_segmenter
from pipeline.models.weights import save_encoder
from pipeline.tracking import git_state

REPO = Path(__file__).resolve().parents[1]
PARAMS = """\
pretrain:
  backbones: [resnet_demo, vit_tiny_demo]
  init: none
  source_size: 112
  subimage_sizes: [56]
finetune:
  models: [resnet_demo-sop, vit_tiny_demo-sop]
  input_size: 64
  backbone_input_size: {vit_tiny_demo: 70}
"""
FINAL = {"epoch": 20, "train_loss": 0.1234, "val_iou": 0.5417, "val_box_iou": 0.5102,
         "baseline_iou": 0.4331}  # fmt: skip
CELL = "landcoverai-vit_tiny_demo-sop-0.25-0"
KEPT = {"resnet_demo": "encoder A (source)", "vit_tiny_demo": "the ViT backbone"}


def write_run(root: Path, backbone: str, seed: int = 0) -> nn.Module:
    """A pretrain run as the pretrain stage leaves it (random weights): the encoder, its
    provenance.json and its metrics file; the encoder, for comparison."""
    run = f"{backbone}-56-0.0"
    folder = layout.pretrain_dir(root, run)
    torch.manual_seed(seed)
    encoder = create_backbone(backbone, 112).eval()
    save_encoder(encoder, folder / layout.ENCODER_FILE)
    provenance = {
        "backbone": backbone, "pretext_variant": "56-0.0", "encoder": layout.ENCODER_FILE,
        "encoder_sha256": "ab" * 32, "kept": KEPT[backbone],
        "params": {"seed": 0, "pretrain": {"backbone": backbone, "source_size": 112,
                                           "subimage_size": 56, "epochs": 20},
                   "compute": {"device": "cpu"}},
        "dataset": "landcoverai", "tile_index_sha256": "cd" * 32, "final": FINAL,
        "steps": 120, "train_tiles": 60, "val_tiles": 18, "starting_weights": "none",
    }  # fmt: skip
    (folder / layout.PROVENANCE_FILE).write_text(json.dumps(provenance))
    metrics = {**{k: v for k, v in FINAL.items() if k != "epoch"}, "epochs": 20}
    path = layout.pretrain_metrics_path(root, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return encoder


def project(root: Path) -> Path:
    (root / "params.yaml").write_text(PARAMS)
    return root / "params.yaml"


def sop(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def export_ok(root: Path, what: str, out: Path, *extra: str) -> None:
    result = sop("export", what, "--out", str(out), "--params", str(project(root)), *extra)
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'timm'}" in result.output


def features(encoder: nn.Module, x: Tensor) -> Tensor:
    """What timm's ``forward_features`` gives: a ResNet's stride-32 map, a ViT's tokens."""
    forward_features = getattr(encoder, "forward_features", None)
    with torch.no_grad():
        if forward_features is not None:
            out: Tensor = forward_features(x)
            return out
        maps: list[Tensor] = encoder(x)
        return maps[-1]


def timm_load(out: Path) -> nn.Module:
    """timm alone, from the timm folder: the architecture and arguments as config.json says."""
    import timm  # after pipeline.models, which makes torchvision importable here

    config = json.loads((out / "hf" / "config.json").read_text())
    file = str(out / "timm" / "model.safetensors")
    model: nn.Module = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=file, num_classes=0),
        **config["model_args"],
    )
    return model.eval()


@pytest.mark.parametrize("backbone", ["resnet_demo", "vit_tiny_demo"])
def test_a_timm_only_load_of_the_export_reproduces_the_encoder(
    tmp_path: Path, backbone: str
) -> None:
    import timm

    encoder = write_run(tmp_path, backbone)
    out = tmp_path / "export"
    export_ok(tmp_path, backbone, out)  # a backbone names its main run
    x = torch.randn(2, 3, 112, 112)
    expected = features(encoder, x)
    torch.testing.assert_close(features(timm_load(out), x), expected, rtol=0, atol=0)
    # The hub folder: timm builds it from config.json and loads model.safetensors itself.
    hub: nn.Module = timm.create_model(f"local-dir:{out / 'hf'}", pretrained=True).eval()
    torch.testing.assert_close(features(hub, x), expected, rtol=0, atol=0)
    data = timm.data.resolve_model_data_config(hub)  # type: ignore[attr-defined,no-untyped-call]
    assert tuple(data["mean"]) == (0.485, 0.456, 0.406)
    assert tuple(data["std"]) == (0.229, 0.224, 0.225)
    assert tuple(data["input_size"]) == (3, 112, 112)
    config = json.loads((out / "hf" / "config.json").read_text())
    rebuilt = timm.create_model(config["architecture"], **config["model_args"])
    rebuilt.load_state_dict(load_file(out / "hf" / "model.safetensors"), strict=True)
    assert config["num_classes"] == config["pretrained_cfg"]["num_classes"] == 0


def test_a_weight_short_of_the_encoder_fails_timms_load(tmp_path: Path) -> None:
    """The documented call keeps timm's load strict (num_classes=0 in the overlay too): a
    missing weight is an error, not random weights left in place."""
    write_run(tmp_path, "resnet_demo")
    out = tmp_path / "export"
    export_ok(tmp_path, "resnet_demo-56-0.0", out)
    file = out / "timm" / "model.safetensors"
    state = load_file(file)
    del state["layer4.1.conv2.weight"]
    save_file(state, file)
    with pytest.raises(RuntimeError, match=r"layer4\.1\.conv2\.weight"):
        timm_load(out)


def python_block(markdown: str) -> str:
    match = re.search(r"```python\n(.*?)```", markdown, re.S)
    assert match is not None, markdown
    return match.group(1)


def test_the_timm_readme_call_runs_as_written_without_our_code(tmp_path: Path) -> None:
    encoder = write_run(tmp_path, "vit_tiny_demo")
    out = tmp_path / "export"
    export_ok(tmp_path, str(layout.pretrain_dir(tmp_path, "vit_tiny_demo-56-0.0")), out)
    snippet = python_block((out / "timm" / "README.md").read_text())
    x = torch.randn(1, 3, 112, 112)
    torch.save(x, tmp_path / "x.pt")
    script = "\n".join([
        "import sys, torch",
        "from pipeline.compat import ensure_torchvision",  # this machine's torchvision only
        "ensure_torchvision()",
        snippet,
        f"torch.save(model.forward_features(torch.load({str(tmp_path / 'x.pt')!r})), 'y.pt')",
        "ours = sorted(m for m in sys.modules if m.startswith('pipeline'))",
        "assert ours == ['pipeline', 'pipeline.compat'], ours",
    ])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=out / "timm", env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    y = torch.load(out / "timm" / "y.pt")
    torch.testing.assert_close(y, features(encoder, x), rtol=0, atol=0)
    (out / "timm" / "y.pt").unlink()


def test_the_model_card_states_commit_params_data_licence_and_metrics(tmp_path: Path) -> None:
    write_run(tmp_path, "resnet_demo")
    out = tmp_path / "export"
    export_ok(tmp_path, "resnet_demo-56-0.0", out, "--repo", "someone/sop-resnet")
    card = (out / "hf" / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: timm\nlicense: cc-by-nc-sa-4.0\n" in front
    commit, _ = git_state(REPO)
    assert commit is not None
    for text in (
        f"`{commit}`",
        "| `landcoverai` | pretraining (pretext task); licence: CC-BY-NC-SA-4.0 |",
        "| `val_iou` | 0.5417 |",
        "| `baseline_iou` | 0.4331 |",
        '"source_size": 112',  # the params
        '"subimage_size": 56',
        "| pretext variant | `56-0.0` |",
        "| starting weights | `none` |",
        'timm.create_model("hf-hub:someone/sop-resnet", pretrained=True)',
    ):
        assert text in card, text
    assert json.loads((out / "hf" / "config.json").read_text())["pretrained_cfg"]["license"] == (
        "cc-by-nc-sa-4.0"
    )


def write_cell(root: Path) -> nn.Module:
    """A vit_tiny_demo cell fine-tuned from its SOP run, as the finetune stage leaves it."""
    write_run(root, "vit_tiny_demo")
    folder = root / "models" / "finetune" / "landcoverai" / "vit_tiny_demo-sop-0.25-s0"
    torch.manual_seed(1)
    segmenter = create_segmenter("vit_tiny_demo", 5, 70).eval()
    save_encoder(segmenter, folder / layout.BEST_WEIGHTS_FILE)
    record = {
        "cell": "vit_tiny_demo-sop-0.25-s0", "model": "vit_tiny_demo-sop",
        "dataset": "landcoverai", "backbone": "vit_tiny_demo", "init": "sop", "fraction": 0.25,
        "seed": 0, "weights": layout.BEST_WEIGHTS_FILE, "weights_sha256": "ef" * 32,
        "steps": 30, "metrics": {"best_val_miou": 0.61, "best_epoch": 4},
    }  # fmt: skip
    (folder / layout.RUN_FILE).write_text(json.dumps(record))
    encoder: nn.Module = segmenter.encoder
    return encoder


def test_a_fine_tuned_cell_exports_its_encoder(tmp_path: Path) -> None:
    encoder = write_cell(tmp_path)
    folder = tmp_path / "models" / "finetune" / "landcoverai" / "vit_tiny_demo-sop-0.25-s0"
    for given in (CELL, str(folder), str(folder / layout.BEST_WEIGHTS_FILE)):
        found = resolve_source(given, tmp_path, "56-0.0")
        named = ("cell", "landcoverai-vit_tiny_demo-sop-0.25-s0", tmp_path.resolve())
        assert (found.kind, found.name, found.root) == named
    out = tmp_path / "export"
    export_ok(tmp_path, CELL, out)
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["model_args"]["img_size"] == 70  # the cell's crops, read from its weights
    x = torch.randn(2, 3, 70, 70)
    torch.testing.assert_close(features(timm_load(out), x), features(encoder, x), rtol=0, atol=0)
    card = (out / "hf" / "README.md").read_text()
    for text in (
        "| `landcoverai` | fine-tuning (labels); licence: CC-BY-NC-SA-4.0 |",
        "| `landcoverai` | pretraining (pretext task); licence: CC-BY-NC-SA-4.0 |",
        "| pretrain run | `vit_tiny_demo-56-0.0` |",  # the SOP run it started from
        "| `val_iou` | 0.5417 |",
        "| `best_val_miou` | 0.6100 |",
    ):
        assert text in card, text


def test_a_cell_from_random_weights_claims_no_pretraining(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "finetune" / "landcoverai" / "resnet_demo-random-1.0-s0"
    torch.manual_seed(2)
    segmenter = create_segmenter("resnet_demo", 5, 64).eval()
    save_encoder(segmenter, folder / layout.BEST_WEIGHTS_FILE)
    record = {"dataset": "landcoverai", "backbone": "resnet_demo", "init": "random",
              "fraction": 1.0, "seed": 0, "metrics": {"best_val_miou": 0.4}}  # fmt: skip
    (folder / layout.RUN_FILE).write_text(json.dumps(record))
    out = tmp_path / "export"
    export_ok(tmp_path, str(folder / layout.BEST_WEIGHTS_FILE), out)
    x = torch.randn(1, 3, 64, 64)
    encoder: nn.Module = segmenter.encoder
    torch.testing.assert_close(features(timm_load(out), x), features(encoder, x), rtol=0, atol=0)
    card = (out / "hf" / "README.md").read_text()
    assert "no SOP pretraining" in card
    assert "| pretrain run | none |" in card
    assert "pretraining (pretext task)" not in card


def test_an_existing_export_is_kept_unless_forced(tmp_path: Path) -> None:
    write_run(tmp_path, "resnet_demo")
    out = tmp_path / "export"
    export_ok(tmp_path, "resnet_demo", out)
    result = sop("export", "resnet_demo", "--out", str(out), "-p", str(tmp_path / "params.yaml"))
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {out / 'timm'}: not empty; give another --out, " \
        "or --force to overwrite its files"  # fmt: skip
    export_ok(tmp_path, "resnet_demo", out, "--force")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with a run, and folders that are not runs (treat it as read-only)."""
    root = tmp_path_factory.mktemp("bad")
    project(root)
    write_run(root, "resnet_demo")
    (root / "empty").mkdir()
    stray = root / "stray"
    stray.mkdir()
    save_encoder(create_backbone("resnet_demo", 112), stray / layout.ENCODER_FILE)
    wrong = layout.pretrain_dir(root, "vit_tiny_demo-56-0.0")
    wrong.mkdir(parents=True)
    save_encoder(create_backbone("resnet_demo", 112), wrong / layout.ENCODER_FILE)
    (wrong / layout.PROVENANCE_FILE).write_text(json.dumps({"backbone": "vit_tiny_demo"}))
    return root


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("resnet_demo-112-0.4", "models/pretrain/resnet_demo-112-0.4/encoder.safetensors: no "
         "such pretrain run"),
        ("landcoverai-resnet_demo-random-0.5-0", "resnet_demo-random-0.5-s0/best.safetensors: "
         "no fine-tuned weights"),
        ("nonsense", "nonsense: not a cell"),
        ("{root}/empty", "empty: neither encoder.safetensors (a pretrain run) nor "
         "best.safetensors"),
        ("{root}/stray", "stray/provenance.json: missing"),
        ("vit_tiny_demo-56-0.0", "vit_tiny_demo-56-0.0/encoder.safetensors: not a "
         "vit_tiny_demo encoder"),
        ("{root}/absent/encoder.safetensors", "absent/encoder.safetensors: no such file"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_file(
    bad_inputs: Path, tmp_path: Path, given: str, message: str
) -> None:
    out = tmp_path / "export"
    result = sop("export", given.format(root=bad_inputs), "--out", str(out), "-p",
                 str(bad_inputs / "params.yaml"))  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert not out.exists()


def test_every_built_in_dataset_states_its_licence() -> None:
    assert CATALOG["landcoverai"].licence == CATALOG["loveda"].licence == "CC-BY-NC-SA-4.0"
    assert "research use" in (CATALOG["deepglobe"].licence or "")
    nc = "CC-BY-NC-SA-4.0"
    assert hub_licence([("landcoverai", "pretraining", nc), ("loveda", "labels", nc)]) == (
        "cc-by-nc-sa-4.0"
    )
    assert hub_licence([("landcoverai", "pretraining", nc), ("mine", "labels", None)]) == "other"
    assert hub_licence([("deepglobe", "labels", CATALOG["deepglobe"].licence)]) == "other"


def test_export_has_help() -> None:
    result = sop("export", "--help")
    assert result.exit_code == 0, result.output
    for option in ("--out", "--repo", "--force", "--params", "--set"):
        assert option in result.output
