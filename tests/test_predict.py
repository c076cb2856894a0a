"""`sop predict`: windows blended without seams, streamed by rows, written as a georeferenced
COG with a colour table; bad input in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from torch import Tensor, nn
from typer.testing import CliRunner

from pipeline import layout
from pipeline import predict as predicting
from pipeline.cli import app
from pipeline.config import load_params
from pipeline.data.catalog import CATALOG
from pipeline.errors import DataError, ParamsError
from pipeline.models.inits import IMAGENET, Normalisation
from pipeline.models.segmenters import create_segmenter
from pipeline.models.weights import save_encoder
from pipeline.predict import (
    NODATA,
    InputBands,
    Predictor,
    blend_weights,
    blended_rows,
    cell_weights,
    load_predictor,
    palette,
    predict_files,
    predict_image,
    stripes,
)
from pipeline.train.finetune import sliding_window_logits, window_starts

CRS = "EPSG:32634"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4200000.0)
CLASSES = 5  # LandCover.ai's
CELL = "landcoverai-resnet_demo-random-0.25-0"  # the demo cell, as its finetune stage is named


def pixelwise(classes: int = CLASSES) -> nn.Module:
    """A 1x1 conv: each pixel's logits depend on that pixel only."""
    torch.manual_seed(0)
    return nn.Conv2d(3, classes, 1).eval()


class PerWindow(nn.Module):
    """Pixel-wise logits plus a ramp across each window: class 0 gains ``alpha`` from a
    window's left edge to its right, so windows disagree where they meet (a seam)."""

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, images: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        logits = torch.zeros(batch, 2, height, width)
        logits[:, 0] += self.alpha * torch.linspace(0, 1, width)
        return logits


def scene(height: int, width: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def whole_image_logits(model: nn.Module, image: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    with torch.no_grad():
        inputs = IMAGENET.apply(torch.from_numpy(image).permute(2, 0, 1)[None].float())
        out: npt.NDArray[Any] = model(inputs)[0].numpy()
    return out


def streamed(
    predictor: Predictor, image: npt.NDArray[np.uint8]
) -> list[tuple[int, npt.NDArray[np.float32]]]:
    height, width = image.shape[:2]
    return list(blended_rows(predictor, lambda top, bottom: image[top:bottom], height, width))


def write_tif(
    path: Path, bands: npt.NDArray[Any], crs: str | None = CRS, nodata: float | None = None
) -> Path:
    """A (count, H, W) GeoTIFF, georeferenced unless ``crs`` is None."""
    count, height, width = bands.shape
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": count,
        "dtype": str(bands.dtype), "nodata": nodata,
    }  # fmt: skip
    if crs is not None:
        profile |= {"crs": crs, "transform": TRANSFORM}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # crs=None: as asked
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(bands)
    return path


# --- blending and streaming ------------------------------------------------------------------


def test_blend_weights_fall_smoothly_to_near_zero_and_are_flat_without_overlap() -> None:
    w = blend_weights(32, 0.5)
    assert w.shape == (32, 32)
    assert 0 < w.min() < 0.01
    assert 0.99 < w.max() <= 1
    np.testing.assert_allclose(w, w[::-1, ::-1])  # symmetric
    assert np.abs(np.diff(w[16])).max() < 0.1  # no step
    assert (blend_weights(32, 0.0) == 1).all()


@pytest.mark.parametrize(
    ("height", "width", "overlap", "batch"),
    [(70, 90, 0.25, 3), (64, 64, 0.0, 1), (20, 100, 0.5, 2), (100, 33, 0.5, 16)],
)
def test_window_tiled_prediction_equals_whole_image_for_a_pixelwise_model(
    height: int, width: int, overlap: float, batch: int
) -> None:
    model, image = pixelwise(), scene(height, width)
    predictor = Predictor(model, IMAGENET, CLASSES, 32, overlap, batch)
    chunks = streamed(predictor, image)
    assert [top for top, _ in chunks] == sorted({top for top, _ in chunks})
    assert sum(c.shape[1] for _, c in chunks) == height  # every row once, in order
    tiled = np.concatenate([c for _, c in chunks], axis=1)
    whole = whole_image_logits(model, image)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
    assert (tiled.argmax(0) == whole.argmax(0)).all()


def test_rows_are_written_as_soon_as_no_window_reaches_them() -> None:
    """Memory stays a band of windows: what is read but not yet yielded stays under two
    windows of rows however tall the scene."""
    image, window = scene(640, 48), 32
    read_to = [0]

    def read(top: int, bottom: int) -> npt.NDArray[np.uint8]:
        read_to[0] = max(read_to[0], bottom)
        return image[top:bottom]

    predictor = Predictor(pixelwise(), IMAGENET, CLASSES, window, 0.25, 2)
    held = []
    for top, chunk in blended_rows(predictor, read, 640, 48):
        held.append(read_to[0] - top)
        assert chunk.shape[1] <= window
    assert len(held) > 20
    assert max(held) <= 2 * window


def peak_python_memory(tmp_path: Path, image: npt.NDArray[np.uint8], name: str) -> int:
    """The peak of Python-side allocations (numpy: reads, logit sums, strips, preview) while
    ``image`` is predicted as a GeoTIFF scene with probabilities and preview."""
    import tracemalloc

    source = write_tif(tmp_path / f"{name}.tif", image.transpose(2, 0, 1).copy())
    predictor = Predictor(pixelwise(), IMAGENET, CLASSES, 64, 0.25, 16)
    tracemalloc.start()
    try:
        predict_files(
            predictor, CATALOG["landcoverai"], InputBands(), [source], tmp_path / "out",
            probabilities=True, preview=True, progress=False,
        )  # fmt: skip
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_in_the_scenes_height(tmp_path: Path) -> None:
    """A scene three times as tall peaks alike, far below the tall scene's own logits."""
    short, tall = (peak_python_memory(tmp_path, scene(h, 256), f"h{h}") for h in (2048, 6144))
    assert tall < 1.1 * short
    assert tall < CLASSES * 6144 * 256 * 4 / 4


def test_memory_stays_flat_in_the_scenes_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scene three times as wide is done in three times the stripes, each of one size."""
    monkeypatch.setattr(predicting, "STRIPE", 512)
    narrow, wide = (peak_python_memory(tmp_path, scene(256, w), f"w{w}") for w in (1024, 3072))
    assert wide < 1.1 * narrow
    assert wide < CLASSES * 256 * 3072 * 4 / 2  # half the wide scene's logits


@pytest.mark.parametrize(("width", "window", "overlap"), [(1000, 64, 0.25), (300, 32, 0.5)])
def test_stripes_cover_each_column_once_with_every_window_reaching_into_them(
    width: int, window: int, overlap: float
) -> None:
    grid = window_starts(width, window, overlap)
    parts = list(stripes(width, window, overlap, stripe=128))
    assert [p.left for p in parts] == list(range(0, width, 128))
    assert [p.right for p in parts] == [*range(128, width, 128), width]
    for p in parts:
        reaching = [x for x in grid if x < p.right and x + window > p.left]
        assert [p.read_left + x for x in p.lefts] == reaching
        assert p.read_left <= p.left
        assert p.right <= p.read_right <= width


def test_a_scene_wider_than_a_stripe_gets_the_same_blend_as_in_one_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows disagree at their borders (PerWindow), so the stripes must blend each pixel
    over the same windows as the whole width would, bit for bit."""
    source = write_tif(tmp_path / "wide.tif", scene(100, 700).transpose(2, 0, 1).copy())
    predictor = Predictor(PerWindow(4.0), IMAGENET, 2, 64, 0.25, 4)
    read = []
    for stripe in (4096, 128):
        monkeypatch.setattr(predicting, "STRIPE", stripe)
        [out] = predict_files(
            predictor, CATALOG["landcoverai"], InputBands(), [source], tmp_path / str(stripe),
            probabilities=True, preview=True, progress=False,
        )  # fmt: skip
        assert out.probabilities is not None
        assert out.preview is not None
        with rasterio.open(out.classes) as ids, rasterio.open(out.probabilities) as probs:
            read.append((ids.read(), probs.read(), np.asarray(Image.open(out.preview))))
    for whole, striped in zip(*read, strict=True):
        np.testing.assert_array_equal(whole, striped)
    assert len(np.unique(read[0][1][0])) > 10  # the blend varies across the scene


def seam(logits: npt.NDArray[Any]) -> float:
    """The largest step between neighbouring columns of class 0's logits."""
    return float(np.abs(np.diff(logits[0], axis=1)).max())


def test_blending_removes_the_seam_a_per_window_model_shows() -> None:
    image, model, window, alpha = scene(32, 160), PerWindow(4.0), 32, 4.0
    hard, smooth = (
        np.concatenate([c for _, c in streamed(Predictor(model, IMAGENET, 2, window, o), image)], 1)
        for o in (0.0, 0.5)
    )
    with torch.no_grad():
        inputs = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        averaged = sliding_window_logits(model, inputs, window, 0.5, 2)[0].numpy()
    ramp_step = alpha / (window - 1)  # the model's own slope inside a window
    assert seam(hard) > 0.9 * alpha  # abutting windows: the full jump
    assert seam(averaged) > 0.4 * alpha  # evaluation's plain average halves it only
    assert seam(smooth) < 3 * ramp_step  # blended: no step beyond the model's own slope
    assert seam(smooth) < seam(averaged) / 5


# --- files -----------------------------------------------------------------------------------


def test_output_is_a_cog_with_the_inputs_georeferencing_colours_and_nodata(
    tmp_path: Path,
) -> None:
    image = scene(70, 90)
    image[:10, :15] = 0  # nodata corner
    source = write_tif(tmp_path / "scene.tif", image.transpose(2, 0, 1).copy(), nodata=0)
    model = pixelwise()
    predictor = Predictor(model, IMAGENET, CLASSES, 32, 0.25, 4)
    info = CATALOG["landcoverai"]
    warned: list[str] = []
    [out] = predict_files(
        predictor, info, InputBands(), [source], tmp_path / "out", True, True,
        warn=warned.append, progress=False,
    )  # fmt: skip
    assert not warned
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scene.classes.tif",
        "scene.preview.png",
        "scene.probabilities.tif",
    ]  # fmt: skip  no partial file left
    expected = whole_image_logits(model, image).argmax(0)
    with rasterio.open(out.classes) as src:
        assert src.crs == rasterio.crs.CRS.from_string(CRS)
        assert src.transform == TRANSFORM
        assert src.nodata == NODATA
        assert src.profile["tiled"]
        assert src.compression.name == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        colours = src.colormap(1)
        ids = src.read(1)
    for c, colour in enumerate(info.class_colors):
        assert colours[c][:3] == colour
    assert (ids[:10, :15] == NODATA).all()
    valid = np.ones(ids.shape, dtype=bool)
    valid[:10, :15] = False
    assert (ids[valid] == expected[valid]).all()
    with rasterio.open(out.probabilities) as src:
        assert (src.count, src.dtypes[0]) == (CLASSES, "uint8")
        assert src.crs == rasterio.crs.CRS.from_string(CRS)
        assert src.transform == TRANSFORM
        probabilities = src.read()
        assert (src.dataset_mask()[:10, :15] == 0).all()
    assert np.abs(probabilities.astype(int).sum(0)[valid] - 255).max() <= CLASSES
    assert (probabilities.argmax(0)[valid] == expected[valid]).mean() > 0.95  # uint8 rounding
    preview = np.asarray(Image.open(out.preview))
    assert preview.shape == (70, 90, 3)
    assert (preview == palette(info)[ids]).all()


def test_a_scene_taller_than_a_block_is_written_in_whole_strips(tmp_path: Path) -> None:
    image = scene(1100, 40)
    image[1000:, :] = 0  # nodata rows in the last, partial block
    source = write_tif(tmp_path / "tall.tif", image.transpose(2, 0, 1).copy(), nodata=0)
    model = pixelwise()
    predictor = Predictor(model, IMAGENET, CLASSES, 32, 0.25, 8)
    [out] = predict_files(
        predictor, CATALOG["landcoverai"], InputBands(), [source], tmp_path / "out",
        probabilities=True, progress=False,
    )  # fmt: skip
    expected = whole_image_logits(model, image).argmax(0)
    with rasterio.open(out.classes) as src:
        assert src.block_shapes == [(512, 512)]
        ids = src.read(1)
    assert (ids[:1000] == expected[:1000]).all()
    assert (ids[1000:] == NODATA).all()
    with rasterio.open(out.probabilities) as src:
        mask = src.dataset_mask()
    assert (mask[:1000] == 255).all()
    assert (mask[1000:] == 0).all()


def test_two_scenes_with_one_name_are_refused(tmp_path: Path) -> None:
    pixels = scene(40, 50).transpose(2, 0, 1).copy()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_tif(tmp_path / "a" / "x.tif", pixels)
    second = write_tif(tmp_path / "b" / "x.tif", pixels)
    predictor = Predictor(pixelwise(), IMAGENET, CLASSES, 32)
    with pytest.raises(ParamsError, match=r"b/x\.tif: .*both write x\.classes\.tif"):
        predict_files(
            predictor, CATALOG["landcoverai"], InputBands(), [first, second], tmp_path / "out"
        )


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # reading it back
def test_a_raster_without_crs_is_predicted_with_a_warning(tmp_path: Path) -> None:
    image = scene(40, 50)
    source = write_tif(tmp_path / "plain.tif", image.transpose(2, 0, 1).copy(), crs=None)
    png = tmp_path / "photo.png"
    Image.fromarray(image).save(png)
    warned: list[str] = []
    predictor = Predictor(pixelwise(), IMAGENET, CLASSES, 32, 0.25, 4)
    outs = predict_files(
        predictor, CATALOG["landcoverai"], InputBands(), [source, png], tmp_path / "out",
        warn=warned.append, progress=False,
    )  # fmt: skip
    assert len(warned) == 2
    assert str(source) in warned[0]
    assert "no CRS" in warned[0]
    with rasterio.open(outs[0].classes) as a, rasterio.open(outs[1].classes) as b:
        assert a.crs is None
        assert (a.read() == b.read()).all()  # the same pixels, whatever the format


def test_multispectral_input_goes_through_bands_and_scale(tmp_path: Path) -> None:
    rgb = scene(40, 50)
    # Bands 3, 2, 1 hold R, G, B in 0..1000 (uint16); band 4 is noise.
    raw = np.stack(
        [rgb[..., 2], rgb[..., 1], rgb[..., 0], rgb[..., 0] // 2]
    ).astype(np.uint16) * 1000 // 255  # fmt: skip
    source = write_tif(tmp_path / "ms.tif", raw.astype(np.uint16))
    model = pixelwise()
    predictor = Predictor(model, IMAGENET, CLASSES, 32, 0.25, 4)
    spec = InputBands((3, 2, 1), (0.0, 1000.0), "data.custom.fields")
    [out] = predict_files(
        predictor, CATALOG["landcoverai"], spec, [source], tmp_path / "out", progress=False
    )
    scaled = np.clip(np.rint(raw[[2, 1, 0]] * (255 / 1000)), 0, 255).astype(np.uint8)
    expected = whole_image_logits(model, scaled.transpose(1, 2, 0).copy()).argmax(0)
    with rasterio.open(out.classes) as src:
        assert (src.read(1) == expected).all()
    with pytest.raises(DataError, match=r"ms\.tif: expected 3 bands \(RGB\), found 4; set data"):
        predict_files(
            predictor, CATALOG["landcoverai"], InputBands(params_section="data.custom.fields"),
            [source], tmp_path / "out", progress=False,
        )  # fmt: skip


def test_bad_rasters_are_named_before_anything_runs(tmp_path: Path) -> None:
    good = write_tif(tmp_path / "good.tif", scene(40, 50).transpose(2, 0, 1).copy())
    two_bands = write_tif(tmp_path / "two.tif", np.zeros((2, 8, 8), dtype=np.uint8))
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    predictor = Predictor(pixelwise(), IMAGENET, CLASSES, 32)
    info, out = CATALOG["landcoverai"], tmp_path / "out"
    with pytest.raises(DataError, match=r"two\.tif: expected 3 bands \(RGB\), found 2"):
        predict_files(predictor, info, InputBands(), [good, two_bands], out, progress=False)
    with pytest.raises(DataError, match=r"broken\.tif: cannot read as a raster"):
        predict_files(predictor, info, InputBands(), [good, broken], out, progress=False)
    with pytest.raises(DataError, match=r"missing\.tif: cannot read"):
        predict_files(predictor, info, InputBands(), [tmp_path / "missing.tif"], out)
    assert not out.exists()


class FailsLater(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("device lost")
        return torch.zeros(images.shape[0], CLASSES, *images.shape[-2:])


def test_a_failure_midway_leaves_no_output_behind(tmp_path: Path) -> None:
    source = write_tif(tmp_path / "scene.tif", scene(96, 96).transpose(2, 0, 1).copy())
    predictor = Predictor(FailsLater(), Normalisation.raw(), CLASSES, 32, 0.0, 1)
    with pytest.raises(RuntimeError, match="device lost"):
        predict_files(
            predictor, CATALOG["landcoverai"], InputBands(), [source], tmp_path / "out",
            probabilities=True, progress=False,
        )  # fmt: skip
    assert list((tmp_path / "out").iterdir()) == []


# --- a real cell, through the command ----------------------------------------------------------


def demo_cell(root: Path) -> Path:
    """A resnet_demo cell as the finetune stage leaves it (random weights), under ``root``."""
    (root / "params.yaml").write_text(
        "finetune:\n  models: [resnet_demo-random]\n  input_size: 64\n  batch_size: 4\n"
    )
    folder = root / "models" / "finetune" / "landcoverai" / "resnet_demo-random-0.25-s0"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_encoder(create_segmenter("resnet_demo", CLASSES, 64), folder / layout.BEST_WEIGHTS_FILE)
    record = {
        "cell": "resnet_demo-random-0.25-s0", "model": "resnet_demo-random",
        "dataset": "landcoverai", "backbone": "resnet_demo", "init": "random", "fraction": 0.25,
        "seed": 0, "weights": layout.BEST_WEIGHTS_FILE,
    }  # fmt: skip
    (folder / layout.RUN_FILE).write_text(json.dumps(record))
    return folder


def test_a_cell_is_found_by_its_stage_name_its_folder_or_its_weights(tmp_path: Path) -> None:
    folder = demo_cell(tmp_path)
    weights = folder / layout.BEST_WEIGHTS_FILE
    assert cell_weights(CELL, tmp_path) == weights
    assert cell_weights(str(folder), tmp_path) == weights
    assert cell_weights(str(weights), tmp_path) == weights
    with pytest.raises(ParamsError, match="not a cell"):
        cell_weights("landcoverai-resnet_demo-random", tmp_path)


def test_the_demo_segmenter_predicts_a_scene_through_sop_predict(tmp_path: Path) -> None:
    demo_cell(tmp_path)
    image = scene(100, 150)
    source = write_tif(tmp_path / "scene.tif", image.transpose(2, 0, 1).copy())
    result = CliRunner().invoke(app, [
        "predict", CELL, str(source), "--out",
        str(tmp_path / "out"), "--overlap", "0.5", "--params", str(tmp_path / "params.yaml"),
        "--set", "compute.device=cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out' / 'scene.classes.tif'}" in result.output
    params = load_params(tmp_path / "params.yaml")
    weights = cell_weights(CELL, tmp_path)
    predictor, _ = load_predictor(weights, params, tmp_path, 0.5, 4, "cpu")
    assert predictor.window == 64
    assert predictor.normalisation == IMAGENET
    expected = np.concatenate([c for _, c in streamed(predictor, image)], axis=1).argmax(0)
    with rasterio.open(tmp_path / "out" / "scene.classes.tif") as src:
        assert src.crs == rasterio.crs.CRS.from_string(CRS)
        assert src.transform == TRANSFORM
        assert (src.read(1) == expected).all()


@pytest.mark.parametrize(
    ("cell", "raster", "message"),
    [
        ("landcoverai-resnet_demo-random-0.5-0", "scene.tif",
         "resnet_demo-random-0.5-s0/best.safetensors: no fine-tuned weights"),
        ("nonsense", "scene.tif", "nonsense: not a cell"),
        (CELL, "two.tif", "two.tif: expected 3 bands (RGB), found 2"),
        (CELL, "broken.tif", "broken.tif: cannot read as a raster"),
        (CELL, "absent.jpg", "absent.jpg: cannot read as an image"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, cell: str, raster: str, message: str
) -> None:
    demo_cell(tmp_path)
    write_tif(tmp_path / "scene.tif", scene(40, 50).transpose(2, 0, 1).copy())
    write_tif(tmp_path / "two.tif", np.zeros((2, 8, 8), dtype=np.uint8))
    (tmp_path / "broken.tif").write_text("not a raster")
    result = CliRunner().invoke(app, [
        "predict", cell, str(tmp_path / raster), "--out", str(tmp_path / "out"),
        "--params", str(tmp_path / "params.yaml"),
    ])  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("given", "used"), [([], 0.4), (["--overlap", "0.5"], 0.5)])
def test_the_overlap_is_the_evaluate_stages_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str], used: float
) -> None:
    demo_cell(tmp_path)
    seen: list[float] = []

    def load(weights: Path, params: Any, root: Path, overlap: float, *rest: Any) -> None:
        seen.append(overlap)
        raise ParamsError("stop here")

    monkeypatch.setattr(predicting, "load_predictor", load)
    result = CliRunner().invoke(app, [
        "predict", CELL, "scene.tif", "--out", str(tmp_path / "out"), *given,
        "--params", str(tmp_path / "params.yaml"), "--set", "finetune.window_overlap=0.4",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert seen == [used]


def test_predict_has_help() -> None:
    result = CliRunner().invoke(app, ["predict", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--out", "--overlap", "--batch-size", "--probabilities", "--preview"):
        assert option in result.output


def test_a_bad_overlap_names_the_option(tmp_path: Path) -> None:
    weights = demo_cell(tmp_path) / layout.BEST_WEIGHTS_FILE
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="--overlap"):
        load_predictor(weights, params, tmp_path, 1.0, 4, "cpu")


def test_an_in_memory_image_is_predicted_as_a_scene_is() -> None:
    model, image = pixelwise(), scene(150, 170, seed=5)
    ids = predict_image(Predictor(model, IMAGENET, CLASSES, 64, 0.25, 4), image)
    assert ids.shape == (150, 170)
    assert (ids == whole_image_logits(model, image).argmax(0)).all()
