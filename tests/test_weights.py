"""Starting weights: each published layout saved by the test itself and loaded through the same
code path the pipeline uses (no weights can be downloaded here)."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, save_file

from pipeline.models.backbones import create_backbone
from pipeline.models.weights import (
    WeightsError,
    load_starting_weights,
    read_state_dict,
    with_sorted_metadata,
)


def reference_state(timm_name: str, **kwargs: object) -> dict[str, torch.Tensor]:
    """A state dict in the published layout: timm's full model, classifier included."""
    import timm

    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_imagenet_resnet50_layout_loads_into_the_feature_encoder(
    tmp_path: Path, suffix: str
) -> None:
    state = reference_state("resnet50")
    assert "fc.weight" in state  # the classifier is in the file and must be ignored
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    encoder = create_backbone("resnet50", 224)
    report = load_starting_weights(encoder, "resnet50", "pretrained", path)
    assert report is not None
    assert report.missing == ()
    assert torch.equal(
        encoder.state_dict()["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"]
    )


def test_lvd142m_vit_layout_at_518_is_resampled_to_224(tmp_path: Path) -> None:
    state = reference_state("vit_small_patch14_dinov2", img_size=518)
    assert state["pos_embed"].shape[1] == 1 + 37 * 37
    path = tmp_path / "dinov2.safetensors"
    save_file(state, path)
    encoder = create_backbone("vits14", 224)
    load_starting_weights(encoder, "vits14", "pretrained", path)
    assert encoder.pos_embed.shape[1] == 1 + 16 * 16
    assert torch.equal(
        encoder.state_dict()["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"]
    )


def test_missing_backbone_weights_are_refused(tmp_path: Path) -> None:
    state = reference_state("resnet50")
    del state["layer3.0.conv1.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError, match=r"1 backbone weights missing.*layer3\.0\.conv1"):
        load_starting_weights(create_backbone("resnet50", 224), "resnet50", "pretrained", path)


def test_wrong_architecture_and_corrupt_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(reference_state("resnet18"), path)
    with pytest.raises(WeightsError, match="other shapes"):
        load_starting_weights(create_backbone("resnet50", 224), "resnet50", "pretrained", path)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"broken\.safetensors: not a readable weights file"):
        read_state_dict(broken)


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this would run on load",))


def test_a_pickle_carrying_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": {"x": Payload()}}))
    with pytest.raises(WeightsError, match=r"evil\.pth"):
        read_state_dict(path)


def test_offline_without_a_local_file_names_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: patch the constant it consults.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"offline\? Set pretrain\.weights_file\.resnet50 "):
        load_starting_weights(create_backbone("resnet50", 224), "resnet50", "pretrained", None)


def test_none_keeps_random_weights() -> None:
    encoder = create_backbone("resnet_demo", 112)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert load_starting_weights(encoder, "resnet_demo", "none", None) is None
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_an_encoder_is_saved_atomically_and_a_full_disk_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from safetensors import safe_open

    from pipeline.errors import DiskFullError
    from pipeline.models.weights import save_encoder

    encoder = torch.nn.Linear(3, 2)
    path = tmp_path / "encoder.safetensors"
    save_encoder(encoder, path, {"init": "sop"})
    loaded = read_state_dict(path)
    assert torch.equal(loaded["weight"], encoder.weight.detach())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"init": "sop"}
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    torch.nn.init.zeros_(encoder.weight)
    with pytest.raises(DiskFullError, match=str(path)):
        save_encoder(encoder, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no stray .tmp


def safetensors_blob(metadata_json: str) -> bytes:
    """A one-tensor safetensors file whose header lists the metadata as given."""
    header = '{"__metadata__":' + metadata_json + ',"w":{"dtype":"F32","shape":[1],'
    header += '"data_offsets":[0,4]}}'
    padded = header.encode().ljust(-(-len(header) // 8) * 8)
    return len(padded).to_bytes(8, "little") + padded + struct.pack("<f", 1.5)


def test_metadata_in_any_order_is_written_as_the_same_bytes() -> None:
    one = safetensors_blob('{"init":"random","backbone":"resnet_demo"}')
    other = safetensors_blob('{"backbone":"resnet_demo","init":"random"}')
    assert one != other
    assert with_sorted_metadata(one) == with_sorted_metadata(other)
    assert with_sorted_metadata(other) == other  # already sorted: unchanged
    assert load(with_sorted_metadata(one))["w"].item() == 1.5


@pytest.mark.slow
def test_an_encoder_saved_by_separate_processes_is_the_same_bytes(tmp_path: Path) -> None:
    """safetensors orders metadata by a per-process hash seed; what DVC hashes must not vary."""
    script = (
        "import sys, torch; from pathlib import Path\n"
        "from pipeline.models.weights import save_encoder\n"
        "torch.manual_seed(0)\n"
        "meta = {'init': 'random', 'backbone': 'resnet_demo', 'model': 'm', 'seed': '0'}\n"
        "save_encoder(torch.nn.Linear(3, 2), Path(sys.argv[1]), meta)\n"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1
    with safe_open(paths[0], "pt") as handle:
        assert handle.metadata()["backbone"] == "resnet_demo"
