"""Fine-tuning initialisations: every init's published layout, saved by the test itself, goes
through ``init_state`` + ``load_init`` exactly as the pipeline will; pinned files come from a real
HTTP server on 127.0.0.1 (no weights can be downloaded here)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pipeline import layout
from pipeline.config import Params
from pipeline.errors import ChecksumError, DataError
from pipeline.models.backbones import create_backbone
from pipeline.models.inits import (
    IMAGENET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INITS,
    NORMALISATIONS,
    SECO_MAX,
    SECO_MIN,
    Normalisation,
    describe,
    fetch,
    init_state,
    load_init,
    normalisation_for,
)
from pipeline.models.weights import WeightsError, save_encoder
from pipeline.zoo import BACKBONES, Init, sop_variant, split_model
from tests.servers import FileServer

State = dict[str, torch.Tensor]
VIT_SIZE = 224  # fine-tuning crops are a multiple of 14; 224 keeps the test fast (16 x 16 grid)
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused

ROOT = Path(__file__).resolve().parents[1]


def perturbed(state: State, seed: int = 0) -> State:
    """Every tensor moved off timm's initial values, so equality after loading means loaded."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            out[k] = v + torch.randn(v.shape, generator=gen, dtype=v.dtype)
        else:
            out[k] = v + 7  # num_batches_tracked
    return out


def timm_state(name: str, **kwargs: Any) -> State:
    import timm

    model = timm.create_model(name, pretrained=False, **kwargs)
    return perturbed(model.state_dict())


@pytest.fixture(scope="module")
def resnet50_fc() -> State:
    """timm resnet50 (= torchvision's key names), classifier included, as on the hub."""
    return timm_state("resnet50")


@pytest.fixture(scope="module")
def dinov2_518() -> State:
    """timm's vit_small_patch14_dinov2 at its pretraining size 518 (1 + 37 x 37 positions)."""
    return timm_state("vit_small_patch14_dinov2", img_size=518, num_classes=0)


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    srv = FileServer(tmp_path_factory.mktemp("served"))
    yield srv
    srv.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_as(monkeypatch: pytest.MonkeyPatch, server: FileServer, init: str, payload: Path) -> Init:
    """Point ``init``'s pinned URL at ``server``, its file name carrying the payload's sha256."""
    spec = INITS[init]
    assert spec.file_name is not None
    stem, suffix = spec.file_name.rsplit("-", 1)[0], Path(spec.file_name).suffix
    name = f"{stem}-{sha256(payload)[:8]}{suffix}"
    (server.folder / name).write_bytes(payload.read_bytes())
    local = dataclasses.replace(spec, url=f"{server.url}/{name}")
    monkeypatch.setitem(INITS, init, local)
    return local


def assert_loaded(encoder: torch.nn.Module, expected: State) -> None:
    """Every encoder tensor equals the file's; a resampled pos_embed equals timm's resampling."""
    from timm.layers import resample_abs_pos_embed  # after pipeline.models: torchvision's fix

    own = encoder.state_dict()
    for key, value in own.items():
        source = expected[key]
        if key == "pos_embed" and source.shape != value.shape:
            grid = encoder.patch_embed.grid_size  # type: ignore[union-attr]
            want = resample_abs_pos_embed(source, new_size=grid, num_prefix_tokens=1)
            assert value.shape == want.shape == (1, 1 + grid[0] * grid[1], source.shape[2])
            assert torch.allclose(value, want)
            assert torch.equal(value[:, 0], source[:, 0])  # the class token's own position
        else:
            assert torch.equal(value, source), key


# --- every init in its published layout ---------------------------------------------------------


@dataclasses.dataclass
class Case:
    backbone: str
    size: int
    expected: State | None  # None: random init, nothing loaded
    weights_file: Path | None = None
    sop_encoder: Path | None = None
    unexpected: tuple[str, ...] = ()
    requests: int = 0  # HTTP requests the first init_state call makes


Layout = Callable[[Path, pytest.MonkeyPatch, FileServer, pytest.FixtureRequest], Case]


def random_layout(backbone: str) -> Layout:
    def build(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
        return Case(backbone, VIT_SIZE, None)

    return build


def sop_layout(backbone: str) -> Layout:
    """The pretrain stage's kept encoder, saved by save_encoder at the pretext's 224."""

    def build(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
        encoder = create_backbone(backbone, 224)
        state = perturbed(encoder.state_dict())
        encoder.load_state_dict(state)
        path = tmp / "encoder.safetensors"
        save_encoder(encoder, path, {"backbone": backbone})
        # Fine-tuned at another size: a ViT's positions are resampled (16 x 16 -> 8 x 8).
        return Case(backbone, 112, state, sop_encoder=path)

    return build


def imagenet_file(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
    """The hub's timm/resnet50.tv_in1k model.safetensors: classifier included, to be ignored."""
    state: State = req.getfixturevalue("resnet50_fc")
    assert "fc.weight" in state
    path = tmp / "model.safetensors"
    save_file(state, path)
    return Case("resnet50", 224, state, weights_file=path)


def dinov2_timm_file(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
    """The hub's timm/vit_small_patch14_dinov2.lvd142m: timm's layout at 518."""
    state: State = req.getfixturevalue("dinov2_518")
    path = tmp / "model.safetensors"
    save_file(state, path)
    return Case("vits14", VIT_SIZE, state, weights_file=path)


def dinov2_release_file(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
    """Meta's dinov2_vits14_pretrain.pth: a plain torch file with the iBOT mask token."""
    state = dict(req.getfixturevalue("dinov2_518"))
    state["mask_token"] = torch.randn(1, 384)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert "blocks.11.ls2.gamma" in state
    path = tmp / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return Case("vits14", VIT_SIZE, state, weights_file=path, unexpected=("mask_token",))


def timm_hub(backbone: str, fixture: str) -> Layout:
    """No local file: timm.create_model(<name>, pretrained=True) (its download stubbed)."""

    def build(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
        import timm

        state: State = req.getfixturevalue(fixture)
        real = timm.create_model

        def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
            model = real(name, pretrained=False, **kwargs)
            if pretrained:  # what the hub download would have put there
                model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
            return model

        mp.setattr(timm, "create_model", create_model)
        return Case(backbone, VIT_SIZE, state)

    return build


def torchgeo_url(init: str) -> Layout:
    """torchgeo's hf file: torch.save of a plain timm resnet50 state dict without fc."""

    def build(tmp: Path, mp: pytest.MonkeyPatch, srv: FileServer, req: Any) -> Case:
        state = {k: v for k, v in req.getfixturevalue("resnet50_fc").items() if "fc." not in k}
        path = tmp / "served.pth"
        torch.save(state, path)
        serve_as(mp, srv, init, path)
        return Case("resnet50", 224, state, requests=1)

    return build


LAYOUTS: dict[str, Layout] = {
    "random-resnet_demo": random_layout("resnet_demo"),
    "random-vit_tiny_demo": random_layout("vit_tiny_demo"),
    "sop-resnet_demo": sop_layout("resnet_demo"),
    "sop-vit_tiny_demo": sop_layout("vit_tiny_demo"),
    "imagenet-file": imagenet_file,
    "imagenet-hub": timm_hub("resnet50", "resnet50_fc"),
    "lvd142m-timm_file": dinov2_timm_file,
    "lvd142m-release_file": dinov2_release_file,
    "lvd142m-hub": timm_hub("vits14", "dinov2_518"),
    "gassl-url": torchgeo_url("gassl"),
    "seco-url": torchgeo_url("seco"),
    "ssl4eo-url": torchgeo_url("ssl4eo"),
    "satlas-url": torchgeo_url("satlas"),
}


def test_every_init_has_a_published_layout_test() -> None:
    assert {case.split("-")[0] for case in LAYOUTS} == set(INITS)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_published_layout_loads_through_the_pipeline_path(
    layout: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: FileServer,
    request: pytest.FixtureRequest,
) -> None:
    init = layout.split("-")[0]
    case = LAYOUTS[layout](tmp_path, monkeypatch, server, request)

    def call() -> tuple[State | None, str]:
        return init_state(
            init,
            case.backbone,
            weights_file=case.weights_file,
            sop_encoder=case.sop_encoder,
            cache_dir=tmp_path / "cache",
            progress=False,
        )

    state, source = call()
    assert len(server.requests) == case.requests
    encoder = create_backbone(case.backbone, case.size)
    if case.expected is None:
        assert state is None
        assert "random" in source
        return
    assert state is not None
    keys = set(state)
    report = load_init(encoder, case.backbone, state, source)
    assert report.missing == ()
    assert report.unexpected == case.unexpected
    assert report.loaded == len(encoder.state_dict())
    assert_loaded(encoder, case.expected)
    assert set(state) == keys  # timm's ViT filter pops keys: it works on a copy
    if case.requests:  # a pinned URL: cached under its own name, verified, no second request
        spec = INITS[init]
        assert spec.file_name is not None
        assert (tmp_path / "cache" / spec.file_name).is_file()
        assert spec.url in source
        again, _ = call()
        assert again is not None
        assert len(server.requests) == 1


def test_a_file_without_num_batches_tracked_loads() -> None:
    # torchvision's original ResNet files predate the buffer; batch norm defaults it to 0.
    state = {k: v for k, v in timm_state("resnet18").items() if "num_batches_tracked" not in k}
    encoder = create_backbone("resnet_demo", 112)
    report = load_init(encoder, "resnet_demo", state, "torchvision-era file")
    assert report.missing == ()
    assert report.unexpected == ()
    assert torch.equal(encoder.state_dict()["layer4.1.bn2.weight"], state["layer4.1.bn2.weight"])


# --- pinned files: hash, cache, offline ---------------------------------------------------------


def test_a_download_with_the_wrong_hash_is_refused_and_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer
) -> None:
    payload = tmp_path / "payload.pth"
    payload.write_bytes(b"not the pinned weights")
    spec = serve_as(monkeypatch, server, "seco", payload)
    payload.write_bytes(b"other bytes served under that name")
    assert spec.file_name is not None
    assert spec.url is not None
    (server.folder / spec.file_name).write_bytes(payload.read_bytes())
    actual = sha256(payload)[:8]
    with pytest.raises(WeightsError, match=rf"sha256 prefix {actual} is not the pinned") as info:
        fetch(spec, tmp_path / "cache", progress=False)
    assert isinstance(info.value, ChecksumError)
    assert spec.url in str(info.value)
    assert str(spec.sha256_prefix) in str(info.value)
    assert not (tmp_path / "cache" / spec.file_name).exists()
    assert (tmp_path / "cache" / f"{spec.file_name}.bad").read_bytes() == payload.read_bytes()


def test_a_cached_file_with_the_wrong_hash_is_set_aside_and_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer
) -> None:
    payload = tmp_path / "payload.pth"
    payload.write_bytes(b"the pinned bytes" * 1000)
    spec = serve_as(monkeypatch, server, "gassl", payload)
    assert spec.file_name is not None
    cached = tmp_path / "cache" / spec.file_name
    cached.parent.mkdir()
    cached.write_bytes(b"stale")
    assert fetch(spec, tmp_path / "cache", progress=False).read_bytes() == payload.read_bytes()
    assert (tmp_path / "cache" / f"{spec.file_name}.bad").read_bytes() == b"stale"
    assert len(server.requests) == 1


def test_a_dropped_download_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer
) -> None:
    payload = tmp_path / "payload.pth"
    payload.write_bytes(bytes(range(256)) * 4096)
    spec = serve_as(monkeypatch, server, "ssl4eo", payload)
    server.faults = ["drop"]
    assert fetch(spec, tmp_path / "cache", progress=False).read_bytes() == payload.read_bytes()
    assert [r[1] is not None for r in server.requests] == [False, True]  # the retry: a Range


@pytest.mark.parametrize("where", ["refused", "404"])
def test_an_unreachable_url_names_the_parameter(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer
) -> None:
    spec = INITS["satlas"]
    base = UNREACHABLE if where == "refused" else server.url
    monkeypatch.setitem(INITS, "satlas", dataclasses.replace(spec, url=f"{base}/w-45fc6972.pth"))
    with pytest.raises(WeightsError) as info:
        init_state(
            "satlas",
            "resnet50",
            weights_file=None,
            sop_encoder=None,
            cache_dir=tmp_path,
            progress=False,
        )
    message = str(info.value)
    assert "\n" not in message
    assert f"offline? download {base}/w-45fc6972.pth and set finetune.weights_file.satlas" in (
        message
    )
    assert ("connection refused" if where == "refused" else "HTTP 404") in message


def test_a_local_file_is_checked_against_the_pinned_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resnet50_fc: State
) -> None:
    path = tmp_path / "gassl.pth"
    torch.save({k: v for k, v in resnet50_fc.items() if "fc." not in k}, path)
    kwargs: dict[str, Any] = {"sop_encoder": None, "cache_dir": tmp_path, "progress": False}
    actual = sha256(path)[:8]
    pattern = rf"finetune\.weights_file\.gassl: .*gassl\.pth has sha256 prefix {actual}, not the "
    with pytest.raises(WeightsError, match=pattern + "pinned da43d987"):
        init_state("gassl", "resnet50", weights_file=path, **kwargs)
    # The same file pinned: used as it is, without any request (the URL is unreachable).
    spec = dataclasses.replace(INITS["gassl"], url=f"{UNREACHABLE}/gassl-{actual}.pth")
    monkeypatch.setitem(INITS, "gassl", spec)
    state, source = init_state("gassl", "resnet50", weights_file=path, **kwargs)
    assert state is not None
    assert str(path) in source
    assert load_init(create_backbone("resnet50", 224), "resnet50", state, source).missing == ()


def test_a_truncated_file_gives_a_clear_error(tmp_path: Path, resnet50_fc: State) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50_fc, path)
    path.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(
        WeightsError,
        match=r"^finetune\.weights_file\.imagenet: .*resnet50\.pth: not a readable weights file",
    ):
        init_state(
            "imagenet",
            "resnet50",
            weights_file=path,
            sop_encoder=None,
            cache_dir=tmp_path,
            progress=False,
        )


def test_offline_timm_init_names_the_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: patch the constant it consults.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"offline\? set finetune\.weights_file\.imagenet "):
        init_state(
            "imagenet",
            "resnet50",
            weights_file=None,
            sop_encoder=None,
            cache_dir=tmp_path,
            progress=False,
        )


# --- refusals ------------------------------------------------------------------------------------


def test_an_init_for_another_backbone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"gassl: no such weights for vits14; .*'lvd142m'"):
        init_state("gassl", "vits14", weights_file=None, sop_encoder=None, cache_dir=tmp_path)


def test_sop_without_an_encoder_names_it_and_the_param(tmp_path: Path) -> None:
    missing = tmp_path / "resnet_demo-56-0.4" / "encoder.safetensors"
    with pytest.raises(WeightsError, match=r"resnet_demo-56-0\.4.*finetune\.weights_file\.sop"):
        init_state("sop", "resnet_demo", weights_file=None, sop_encoder=missing, cache_dir=tmp_path)


def test_the_weights_stage_without_an_encoder_says_which_stage_to_run(tmp_path: Path) -> None:
    from pipeline.config import load_params
    from pipeline.flows.finetune import weights_flow

    params = load_params(ROOT / "demo" / "params.yaml")
    variant = params.pretrain.main_variant
    with pytest.raises(WeightsError, match=rf"dvc repro pretrain@resnet_demo-{variant}\)"):
        weights_flow.fn("resnet_demo-sop", params, tmp_path)
    assert not layout.init_path(tmp_path, "resnet_demo-sop").exists()


# --- the SOP encoder's pretext gate (finetune.sop_gate) ------------------------------------------

BASELINE = 0.433  # the demo's centred-box baseline_iou


def sop_project(root: Path, val_iou: float | None, *overrides: str) -> tuple[Params, Path]:
    """The demo's params and, under ``root``, the SOP model's pretrain encoder and (unless
    ``val_iou`` is None) its pretext metrics file, whose path is returned."""
    from pipeline.config import load_params

    params = load_params(ROOT / "demo" / "params.yaml", overrides)
    init = split_model(params.finetune.models[-1])[1]
    name = f"resnet_demo-{sop_variant(init, params.pretrain.main_variant)}"
    encoder = layout.pretrain_dir(root, name) / layout.ENCODER_FILE
    encoder.parent.mkdir(parents=True)
    save_encoder(create_backbone("resnet_demo", 128), encoder, {"backbone": "resnet_demo"})
    metrics = layout.pretrain_metrics_path(root, name)
    if val_iou is not None:
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"val_iou": val_iou, "baseline_iou": BASELINE}))
    return params, metrics


@pytest.mark.parametrize(
    "overrides",
    [
        ("finetune.models=[resnet_demo-random, resnet_demo-sop]",),
        ("pretrain.color_jitters=[0.0, 0.4]", "finetune.models=[resnet_demo-sop-56-0.4]"),
    ],
    ids=["sop", "ablation"],
)
def test_the_weights_stage_refuses_an_encoder_below_the_pretext_margin(
    tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    from pipeline.flows.finetune import weights_flow

    params, metrics = sop_project(tmp_path, 0.47, *overrides)
    model = params.finetune.models[-1]
    with pytest.raises(DataError) as refused:
        weights_flow.fn(model, params, tmp_path)
    assert str(refused.value) == (
        f"{metrics}: val_iou 0.47 does not beat the centred-box baseline_iou 0.433 by "
        "finetune.sop_gate_margin 0.05: the SOP encoder learned little beyond the position "
        "prior (finetune.sop_gate: false to use it)"
    )
    assert not layout.init_path(tmp_path, model).exists()


def test_an_encoder_at_the_margin_passes_and_its_figures_are_recorded(tmp_path: Path) -> None:
    from pipeline.flows.finetune import weights_flow

    params, metrics = sop_project(tmp_path, 0.483)  # 0.05 above the baseline, as rounded
    provenance = weights_flow.fn("resnet_demo-sop", params, tmp_path)
    assert provenance["sop_gate"] == {
        "metrics": metrics.relative_to(tmp_path).as_posix(),
        "val_iou": 0.483,
        "baseline_iou": BASELINE,
        "margin": 0.05,
    }
    written = layout.init_path(tmp_path, "resnet_demo-sop").with_suffix(".json")
    assert json.loads(written.read_text())["sop_gate"] == provenance["sop_gate"]


@pytest.mark.parametrize("val_iou", [0.40, None], ids=["below-baseline", "no-metrics"])
def test_with_the_gate_off_any_encoder_is_used(tmp_path: Path, val_iou: float | None) -> None:
    from pipeline.flows.finetune import weights_flow

    params, _ = sop_project(tmp_path, val_iou, "finetune.sop_gate=false")
    provenance = weights_flow.fn("resnet_demo-sop", params, tmp_path)
    assert "sop_gate" not in provenance
    assert layout.init_path(tmp_path, "resnet_demo-sop").is_file()


def test_without_pretext_metrics_the_gate_names_the_file_and_the_stage(tmp_path: Path) -> None:
    from pipeline.flows.finetune import weights_flow

    params, metrics = sop_project(tmp_path, None)
    with pytest.raises(DataError) as refused:
        weights_flow.fn("resnet_demo-sop", params, tmp_path)
    variant = params.pretrain.main_variant
    assert str(refused.value) == (
        f"{metrics}: no pretext metrics for the SOP encoder; run "
        f"`dvc repro pretrain@resnet_demo-{variant}` (or set finetune.sop_gate: false)"
    )


def test_a_missing_backbone_key_fails_naming_it() -> None:
    state = timm_state("resnet18")
    del state["layer3.0.conv1.weight"]
    with pytest.raises(WeightsError, match=r"1 backbone weights missing.*layer3\.0\.conv1\.weight"):
        load_init(create_backbone("resnet_demo", 112), "resnet_demo", state, "partial")


def test_an_unexpected_key_is_reported() -> None:
    state = timm_state("resnet18")
    state["projector.0.weight"] = torch.zeros(2, 2)
    report = load_init(create_backbone("resnet_demo", 112), "resnet_demo", state, "with extra")
    assert report.unexpected == ("projector.0.weight",)
    assert report.missing == ()
    assert "unexpected keys: projector.0.weight" in describe(report)


# --- registry and normalisations ---------------------------------------------------------------


def test_registry_matches_the_zoo_and_the_notes() -> None:
    for name, spec in INITS.items():
        assert spec.name == name
        assert set(spec.backbones) <= set(BACKBONES)
        assert spec.normalisation in NORMALISATIONS
    assert {n: s.sha256_prefix for n, s in INITS.items() if s.kind == "url"} == {
        "gassl": "da43d987",
        "seco": "018bf397",
        "ssl4eo": "2b57ba8b",
        "satlas": "45fc6972",
    }
    assert all(str(s.url).startswith("https://hf.co/torchgeo/") for s in INITS.values() if s.url)
    assert INITS["imagenet"].timm_name == "resnet50.tv_in1k"
    assert INITS["lvd142m"].timm_name == "vit_small_patch14_dinov2.lvd142m"
    with pytest.raises(ValueError, match="8 hex digits"):
        dataclasses.replace(INITS["gassl"], url="https://example.org/weights.pth")


def channel_images(values: list[list[float]]) -> torch.Tensor:
    """(B, 3, 1, 1) images, one per row of per-channel values."""
    return torch.tensor(values, dtype=torch.float64).view(len(values), 3, 1, 1)


def test_imagenet_normalisation_is_x_over_255_then_imagenet_statistics() -> None:
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert IMAGENET.mean == pytest.approx([255 * m for m in IMAGENET_MEAN])
    assert IMAGENET.std == pytest.approx([255 * s for s in IMAGENET_STD])
    out = IMAGENET.apply(channel_images([[255 * m for m in IMAGENET_MEAN]]))
    assert torch.allclose(out, torch.zeros_like(out))
    x = torch.rand(2, 3, 5, 5) * 255
    want = (x / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(IMAGENET.apply(x), want, atol=1e-6)
    # The SOP pretext normalises its 0..1 images with the same statistics.
    from pipeline.train.pretrain import normalise

    assert torch.allclose(normalisation_for("sop", "own").apply(x), normalise(x / 255), atol=1e-6)
    for init in ("random", "sop", "imagenet", "lvd142m", "gassl"):
        assert normalisation_for(init, "own") == IMAGENET


def test_seco_normalisation_composes_its_three_steps() -> None:
    seco = normalisation_for("seco", "own")
    lo, hi = SECO_MIN, SECO_MAX
    at_min, at_max = seco.apply(channel_images([list(lo), list(hi)]))
    for c in range(3):
        m, s = IMAGENET_MEAN[c], IMAGENET_STD[c]
        assert at_min[c].item() == pytest.approx((0 - m) / s)
        assert at_max[c].item() == pytest.approx((255 - m) / s)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 255
    view = {
        k: torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)
        for k, v in (("lo", lo), ("hi", hi), ("m", IMAGENET_MEAN), ("s", IMAGENET_STD))
    }
    steps = ((x - view["lo"]) / (view["hi"] - view["lo"]) * 255 - view["m"]) / view["s"]
    assert torch.allclose(seco.apply(x), steps)


def test_reflectance_and_satlas_normalisations() -> None:
    ssl4eo, satlas = normalisation_for("ssl4eo", "own"), normalisation_for("satlas", "own")
    assert ssl4eo == Normalisation((0.0,) * 3, (10000.0,) * 3)
    assert torch.equal(ssl4eo.apply(channel_images([[10000.0] * 3])), torch.ones(1, 3, 1, 1))
    assert torch.equal(
        satlas.apply(channel_images([[255.0] * 3, [0.0] * 3]))[:, 0, 0, 0],
        torch.tensor([1.0, 0.0], dtype=torch.float64),
    )


def test_normalisation_choice_and_apply_details() -> None:
    for init, spec in INITS.items():
        assert normalisation_for(init, "own") == NORMALISATIONS[spec.normalisation]
        assert normalisation_for(init, "imagenet") == IMAGENET
    with pytest.raises(ValueError, match="'own' or 'imagenet'"):
        normalisation_for("seco", "sentinel")
    with pytest.raises(WeightsError, match="unknown initialisation"):
        normalisation_for("moco", "own")
    tile = torch.full((3, 2, 2), 255, dtype=torch.uint8)  # one image, integers
    out = IMAGENET.apply(tile)
    assert out.dtype == torch.float32
    assert out.shape == (3, 2, 2)
    assert out[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    with pytest.raises(ValueError, match="3, H, W"):
        IMAGENET.apply(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        Normalisation((0.0, 0.0, 0.0), (1.0, 0.0, 1.0))
