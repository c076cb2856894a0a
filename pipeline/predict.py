"""`sop predict`: a fine-tuned cell's segmenter on rasters of any size (README, "Predicting on
your own imagery").

A scene is cut into windows of the cell's input size (``window_starts``, as in evaluation),
batched through the model, and each window's logits are blended with weights that fall
smoothly to near zero at its edges, so a window's border pixels, where a model sees the least
context, count least and no seam shows. Rows are read by bands, and a row of the output is
written as soon as no later window covers it: memory holds a band of ``window`` rows, never
the scene. A scene wider than ``STRIPE`` is done in vertical stripes, each with every window of
the scene's grid that reaches into it, so memory is flat in the width as well and a pixel blends
the same windows whichever stripe holds it. Outputs are written beside a temporary name and
renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline import layout
from pipeline.config import Params
from pipeline.data.catalog import DatasetInfo, get_dataset
from pipeline.data.tiling import SceneRecord, open_raster, scene_size, to_uint8
from pipeline.errors import DataError, ParamsError
from pipeline.files import atomic_write
from pipeline.models.inits import Normalisation, normalisation_for
from pipeline.models.segmenters import create_segmenter
from pipeline.models.weights import read_state_dict
from pipeline.train.finetune import window_starts
from pipeline.zoo import base_init

NODATA = 255  # the class map's nodata value: class ids stay below it
BLOCK = 512  # the output's tile size
STRIPE = 8 * BLOCK  # output columns predicted at a time: memory is flat in the width too
PREVIEW_SIDE = 1024  # the preview's longer side at most
GDAL_CACHE_BYTES = 32 << 20  # GDAL's block cache otherwise grows to 5% of RAM as it writes

Logits = npt.NDArray[np.float32]
Warn = Callable[[str], None]


def warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- blending --------------------------------------------------------------------------------


def ramp_width(window: int, overlap: float) -> int:
    """Pixels over which a window's weight rises: the overlap between neighbouring windows."""
    stride = max(1, int(window * (1.0 - overlap)))
    return min(max(window - stride, 0), window // 2)


def blend_weights(window: int, overlap: float) -> Logits:
    """(window, window) weights: sin² from near 0 at the edges to 1 over the overlap, flat
    inside. Never 0, so a scene's border pixels, covered by one window, are still predicted."""
    ramp = ramp_width(window, overlap)
    side = np.ones(window, dtype=np.float64)
    if ramp > 0:
        rise = np.sin(np.pi / 2 * (np.arange(ramp) + 0.5) / ramp) ** 2
        side[:ramp] = rise
        side[window - ramp :] = np.minimum(side[window - ramp :], rise[::-1])
    return np.outer(side, side).astype(np.float32)


class RowAccumulator:
    """Weighted logit sums and weight sums for the rows from ``origin`` on, full width."""

    def __init__(self, num_classes: int, width: int) -> None:
        self.origin = 0
        self.logits = np.zeros((num_classes, 0, width), dtype=np.float32)
        self.weights = np.zeros((0, width), dtype=np.float32)

    def _cover(self, end: int) -> None:
        missing = end - self.origin - self.weights.shape[0]
        if missing > 0:
            c, _, w = self.logits.shape
            self.logits = np.concatenate([self.logits, np.zeros((c, missing, w), np.float32)], 1)
            self.weights = np.concatenate([self.weights, np.zeros((missing, w), np.float32)])

    def add(self, top: int, left: int, logits: Logits, weights: Logits) -> None:
        height, width = weights.shape
        self._cover(top + height)
        rows = slice(top - self.origin, top - self.origin + height)
        self.logits[:, rows, left : left + width] += logits * weights
        self.weights[rows, left : left + width] += weights

    def take(self, end: int) -> Logits:
        """The blended (C, rows, width) logits of rows ``origin``..``end``, dropped from here."""
        n = end - self.origin
        out: Logits = self.logits[:, :n] / self.weights[None, :n]
        self.logits, self.weights = self.logits[:, n:], self.weights[n:]
        self.origin = end
        return out


# --- the model over windows ------------------------------------------------------------------


@dataclass(frozen=True)
class Predictor:
    """A segmenter with what it was trained with: its input normalisation and window."""

    model: nn.Module
    normalisation: Normalisation
    num_classes: int
    window: int
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "cpu"

    @torch.inference_mode()
    def logits(self, crops: Sequence[npt.NDArray[np.uint8]]) -> list[Logits]:
        """Each (h, w, 3) uint8 crop's (C, h, w) logits; crops smaller than the window (a scene
        smaller than it) are padded by mirroring, so every batch has one shape."""
        w = self.window
        padded = [
            np.pad(c, ((0, w - c.shape[0]), (0, w - c.shape[1]), (0, 0)), mode="symmetric")
            for c in crops
        ]
        images = torch.from_numpy(np.stack(padded)).to(self.device)
        inputs = self.normalisation.apply(images.permute(0, 3, 1, 2).float())
        cuda = torch.device(self.device).type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = self.model(inputs).float().cpu().numpy()
        return [out[i, :, : c.shape[0], : c.shape[1]] for i, c in enumerate(crops)]


RowReader = Callable[[int, int], npt.NDArray[np.uint8]]  # (top, bottom) -> (rows, width, 3)


def blended_rows(
    predictor: Predictor,
    read_rows: RowReader,
    height: int,
    width: int,
    lefts: Sequence[int] | None = None,
) -> Iterator[tuple[int, Logits]]:
    """(first row, (C, rows, width) blended logits) for consecutive row chunks of a scene, each
    yielded as soon as no later window reaches into it. ``lefts``: the windows' columns (a
    stripe's share of the scene's grid), by default the grid over ``width``."""
    window = predictor.window
    tops = window_starts(height, window, predictor.overlap)
    if lefts is None:
        lefts = window_starts(width, window, predictor.overlap)
    weights = blend_weights(window, predictor.overlap)
    acc = RowAccumulator(predictor.num_classes, width)
    pending: list[tuple[int, int, npt.NDArray[np.uint8]]] = []

    def run(count: int) -> None:
        batch, pending[:] = pending[:count], pending[count:]
        for (top, left, crop), logits in zip(
            batch, predictor.logits([c for _, _, c in batch]), strict=True
        ):
            acc.add(top, left, logits, weights[: crop.shape[0], : crop.shape[1]])

    for k, top in enumerate(tops):
        band = read_rows(top, min(top + window, height))
        pending += [(top, left, band[:, left : left + window]) for left in lefts]
        next_top = tops[k + 1] if k + 1 < len(tops) else height
        while len(pending) >= predictor.batch_size or (next_top == height and pending):
            run(predictor.batch_size)
            final = pending[0][0] if pending else next_top
            if final > acc.origin:
                origin = acc.origin
                yield origin, acc.take(final)


def predict_image(predictor: Predictor, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """An in-memory (H, W, 3) uint8 image's (H, W) class ids, windowed and blended as a scene's
    (a dataset's test images, for a benchmark's submission)."""
    height, width = image.shape[:2]
    rows = [
        logits.argmax(0)
        for _, logits in blended_rows(
            predictor, lambda top, bottom: image[top:bottom], height, width
        )
    ]
    return np.concatenate(rows, axis=0)


@dataclass(frozen=True)
class Stripe:
    """Output columns ``left``..``right`` and the scene's windows that reach into them, which
    read columns ``read_left``..``read_right``."""

    left: int
    right: int
    read_left: int
    read_right: int
    lefts: tuple[int, ...]  # the windows' columns, from ``read_left``


def stripes(width: int, window: int, overlap: float, stripe: int = STRIPE) -> Iterator[Stripe]:
    grid = window_starts(width, window, overlap)
    for left in range(0, width, stripe):
        right = min(left + stripe, width)
        mine = [x for x in grid if x < right and x + window > left]
        read_left, read_right = mine[0], min(mine[-1] + window, width)
        yield Stripe(left, right, read_left, read_right, tuple(x - read_left for x in mine))


def softmax(logits: Logits) -> Logits:
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    out: Logits = shifted / shifted.sum(axis=0, keepdims=True)
    return out


# --- rasters in ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputBands:
    """Which bands are RGB and how they map to 0..255: a custom dataset's ``bands``/``scale``."""

    bands: tuple[int, int, int] | None = None
    scale: tuple[float, float] | None = None
    params_section: str | None = None  # named in an error: where to set them


def scene_record(path: Path, spec: InputBands) -> SceneRecord:
    return SceneRecord(
        path.stem, path, None, bands=spec.bands, scale=spec.scale,
        params_section=spec.params_section,
    )  # fmt: skip


class SceneReader:
    """A raster's RGB rows as uint8 and its validity (False where the input is nodata)."""

    def __init__(self, path: Path, spec: InputBands) -> None:
        self.height, self.width = scene_size(scene_record(path, spec))
        self.path, self.spec = path, spec
        self.bands = list(spec.bands or (1, 2, 3))
        self.src: Any = open_raster(path)
        self.crs = getattr(self.src, "crs", None)
        self.transform = getattr(self.src, "transform", None)

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.src.__exit__(None, None, None)

    def _read(self, what: str, top: int, bottom: int, left: int, right: int) -> Any:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        window = Window(left, top, right - left, bottom - top)
        try:
            return getattr(self.src, what)(self.bands, window=window)
        except RasterioError as exc:
            raise DataError(f"{self.path}: rows {top}-{bottom} unreadable ({exc})") from None

    def rows(
        self, top: int, bottom: int, left: int = 0, right: int | None = None
    ) -> npt.NDArray[np.uint8]:
        """(rows, columns, 3) uint8 RGB of rows ``top``..``bottom``, all columns by default."""
        right = self.width if right is None else right
        strip = to_uint8(self._read("read", top, bottom, left, right), self.spec.scale)
        return np.ascontiguousarray(strip.transpose(1, 2, 0))

    def valid(self, top: int, bottom: int, left: int, right: int) -> npt.NDArray[np.bool_]:
        if not hasattr(self.src, "read_masks"):  # PNG/JPEG: no nodata
            return np.ones((bottom - top, right - left), dtype=bool)
        masks = self._read("read_masks", top, bottom, left, right)
        valid: npt.NDArray[np.bool_] = (masks > 0).any(axis=0)
        return valid


# --- rasters out -----------------------------------------------------------------------------


def hue(index: int) -> list[int]:
    """A colour for a class its dataset gives none: golden-angle hues, distinct and fixed."""
    turn = (index * 0.618034) % 1.0
    return [int(255 * (0.5 + 0.5 * math.cos(2 * math.pi * (turn - k / 3)))) for k in range(3)]


def palette(info: DatasetInfo) -> npt.NDArray[np.uint8]:
    """(256, 3) colours: the dataset's per class, black for nodata."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in range(len(info.class_names)):
        colour = info.class_colors[c] if c < len(info.class_colors) else None
        lut[c] = hue(c) if colour is None else colour
    return lut


@dataclass(frozen=True)
class Outputs:
    classes: Path
    probabilities: Path | None
    preview: Path | None

    @classmethod
    def for_scene(cls, out_dir: Path, scene: Path, probabilities: bool, preview: bool) -> Outputs:
        stem = out_dir / scene.stem
        return cls(
            Path(f"{stem}.classes.tif"),
            Path(f"{stem}.probabilities.tif") if probabilities else None,
            Path(f"{stem}.preview.png") if preview else None,
        )


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def open_output(path: Path, reader: SceneReader, count: int, nodata: int | None) -> Any:
    """A tiled, deflated GeoTIFF at ``path``'s partial name with the input's georeferencing."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    profile: dict[str, Any] = {
        "driver": "GTiff", "width": reader.width, "height": reader.height, "count": count,
        "dtype": "uint8", "nodata": nodata, "tiled": True, "blockxsize": BLOCK,
        "blockysize": BLOCK, "compress": "deflate", "crs": reader.crs,
    }  # fmt: skip
    if reader.transform is not None:
        profile["transform"] = reader.transform
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(_partial(path), "w", **profile)


def finish_cog(path: Path, resampling: str) -> None:
    """The partial GeoTIFF as a cloud-optimised one at ``path`` (copied by blocks, renamed)."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.shutil import copy

    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        copy(_partial(path), tmp, driver="COG", compress="DEFLATE", blocksize=BLOCK,
             overview_resampling=resampling)  # fmt: skip
    with open(tmp, "rb") as handle:  # on disk before the name says it is complete
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _partial(path).unlink()


def _remove_partials(outputs: Outputs) -> None:
    for path in (outputs.classes, outputs.probabilities):
        if path is not None:
            _partial(path).unlink(missing_ok=True)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)


class Preview:
    """Every ``step``-th row and column of the class map, filled stripe by stripe."""

    def __init__(self, height: int, width: int) -> None:
        self.step = max(1, math.ceil(max(height, width) / PREVIEW_SIDE))
        self.ids = np.full((-(-height // self.step), -(-width // self.step)), NODATA, np.uint8)

    def add(self, top: int, left: int, ids: npt.NDArray[np.uint8]) -> None:
        first_row, first_col = (-top) % self.step, (-left) % self.step
        part = ids[first_row :: self.step, first_col :: self.step]
        row, col = (top + first_row) // self.step, (left + first_col) // self.step
        self.ids[row : row + part.shape[0], col : col + part.shape[1]] = part

    def write(self, path: Path, lut: npt.NDArray[np.uint8]) -> None:
        from PIL import Image

        with atomic_write(path) as handle:
            Image.fromarray(lut[self.ids]).save(handle, format="PNG")


# --- one scene -------------------------------------------------------------------------------


class StripWriter:
    """Finished rows into the open outputs in strips of whole 512-row blocks, so GDAL compresses
    each block once instead of re-reading half-written ones from its cache."""

    def __init__(self, classes: Any, probabilities: Any | None, left: int = 0) -> None:
        self.classes, self.probabilities = classes, probabilities
        self.top, self.left = 0, left  # the first buffered row; the stripe's first column
        self.buffered: list[tuple[npt.NDArray[np.uint8], ...]] = []

    def add(self, *rows: npt.NDArray[np.uint8]) -> None:
        """(ids, valid[, probabilities]) of the next rows."""
        self.buffered.append(rows)
        if sum(r[0].shape[0] for r in self.buffered) >= BLOCK:
            self.flush(whole_blocks=True)

    def flush(self, whole_blocks: bool = False) -> None:
        from rasterio.windows import Window

        if not self.buffered:
            return
        parts = [np.concatenate(column, axis=-2) for column in zip(*self.buffered, strict=True)]
        rows = parts[0].shape[0]
        n = rows - rows % BLOCK if whole_blocks else rows
        window = Window(self.left, self.top, parts[0].shape[1], n)
        self.classes.write(parts[0][:n], 1, window=window)
        if self.probabilities is not None:
            self.probabilities.write(parts[2][:, :n], window=window)
            self.probabilities.write_mask(parts[1][:n], window=window)
        self.top += n
        self.buffered = [tuple(part[..., n:, :] for part in parts)] if n < rows else []


def predict_stripe(
    predictor: Predictor, reader: SceneReader, stripe: Stripe, writer: StripWriter
) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """Write one stripe's rows as they are finished; yield (first row, class ids) of each."""
    read_left, read_right = stripe.read_left, stripe.read_right
    columns = slice(stripe.left - read_left, stripe.right - read_left)
    chunks = blended_rows(
        predictor, lambda top, bottom: reader.rows(top, bottom, read_left, read_right),
        reader.height, read_right - read_left, stripe.lefts,
    )  # fmt: skip
    for top, logits in chunks:
        logits = logits[:, :, columns]
        valid = reader.valid(top, top + logits.shape[1], stripe.left, stripe.right)
        ids = np.where(valid, logits.argmax(0), NODATA).astype(np.uint8)
        mask = valid.astype(np.uint8) * 255
        if writer.probabilities is None:
            writer.add(ids, mask)
        else:
            writer.add(ids, mask, np.rint(softmax(logits) * 255).astype(np.uint8))
        yield top, ids
    writer.flush()


def predict_scene(
    predictor: Predictor,
    reader: SceneReader,
    outputs: Outputs,
    lut: npt.NDArray[np.uint8],
    progress: bool = True,
) -> None:
    """Stream one scene through the predictor into its outputs; none is left half written."""
    from tqdm import tqdm

    preview = Preview(reader.height, reader.width)
    try:
        with ExitStack() as files:
            classes = files.enter_context(open_output(outputs.classes, reader, 1, NODATA))
            classes.write_colormap(1, {i: (*map(int, lut[i]), 0 if i == NODATA else 255)
                                       for i in range(256)})  # fmt: skip
            probs = None
            if outputs.probabilities is not None:
                out = open_output(outputs.probabilities, reader, predictor.num_classes, None)
                probs = files.enter_context(out)
            bar = files.enter_context(tqdm(total=reader.height * reader.width, unit="px",
                unit_scale=True, desc=reader.path.name, disable=not progress))  # fmt: skip
            for stripe in stripes(reader.width, predictor.window, predictor.overlap, STRIPE):
                writer = StripWriter(classes, probs, stripe.left)
                for top, ids in predict_stripe(predictor, reader, stripe, writer):
                    preview.add(top, stripe.left, ids)
                    bar.update(ids.size)
        finish_cog(outputs.classes, "nearest")
        if outputs.probabilities is not None:
            finish_cog(outputs.probabilities, "average")
        if outputs.preview is not None:
            preview.write(outputs.preview, lut)
    except BaseException:
        _remove_partials(outputs)
        raise


# --- a cell ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellName:
    dataset: str
    name: str  # <model>-<fraction>-s<seed>


def cell_weights(cell: str, root: Path) -> Path:
    """A cell's ``best.safetensors``: from its folder, the file itself, or its name
    ``<dataset>-<model>-<fraction>-<seed>`` (the finetune stage's) under ``root``."""
    given = Path(cell)
    if given.is_dir():
        return given / layout.BEST_WEIGHTS_FILE
    if given.suffix == ".safetensors" or given.exists():
        return given
    dataset, _, rest = cell.partition("-")
    model, _, seed = rest.rpartition("-")
    model, _, fraction = model.rpartition("-")
    try:
        name = f"{model}-{float(fraction)}-s{int(seed.removeprefix('s'))}"
    except ValueError:
        raise ParamsError(
            f"{cell}: not a cell (<dataset>-<model>-<fraction>-<seed>, e.g. "
            "landcoverai-resnet50-seco-0.25-0), a cell folder or a best.safetensors"
        ) from None
    return layout.cell_dir(root, CellName(dataset, name)) / layout.BEST_WEIGHTS_FILE


def read_run(weights: Path) -> dict[str, Any]:
    """The cell's training record beside its weights (its dataset, backbone and init)."""
    if not weights.is_file():
        raise DataError(f"{weights}: no fine-tuned weights; run the cell's finetune stage first")
    path = weights.parent / layout.RUN_FILE
    try:
        run: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: missing; predict reads the cell's record beside its weights"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    missing = [key for key in ("dataset", "backbone", "init") if key not in run]
    if missing:
        raise DataError(f"{path}: lacks {missing}; not a finetune stage's run.json")
    return run


def input_bands(params: Params, dataset: str) -> InputBands:
    spec = params.data.custom.get(dataset)
    if spec is None:
        return InputBands()
    return InputBands(
        (spec.bands[0], spec.bands[1], spec.bands[2]) if spec.bands else None,
        (spec.scale[0], spec.scale[1]) if spec.scale else None,
        f"data.custom.{dataset}",
    )


def load_predictor(
    weights: Path, params: Params, root: Path, overlap: float, batch_size: int, device: str
) -> tuple[Predictor, DatasetInfo]:
    """The cell's segmenter with its best weights, its training normalisation and window."""
    if not 0.0 <= overlap < 1.0:
        raise ParamsError(f"--overlap: want a share in [0, 1), got {overlap}")
    run = read_run(weights)
    info = get_dataset(run["dataset"], params.data, root)
    classes = len(info.class_names)
    if not 0 < classes < NODATA:
        raise DataError(f"{run['dataset']}: {classes} classes; predict writes 1 to 254")
    f = params.finetune
    window = f.input_size_of(run["backbone"])
    model = create_segmenter(run["backbone"], classes, window)
    try:
        model.load_state_dict(read_state_dict(weights))
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise DataError(
            f"{weights}: not a {run['backbone']} segmenter for {run['dataset']}'s {classes} "
            f"classes ({reason})"
        ) from None
    model.eval().to(device)
    norm = normalisation_for(base_init(run["init"]), f.normalisation_of(run["init"]))
    return Predictor(model, norm, classes, window, overlap, batch_size, device), info


def predict_files(
    predictor: Predictor,
    info: DatasetInfo,
    spec: InputBands,
    rasters: Sequence[Path],
    out_dir: Path,
    probabilities: bool = False,
    preview: bool = False,
    warn: Warn = warn_on_stderr,
    progress: bool = True,
) -> list[Outputs]:
    """Predict each raster into ``out_dir``; every input is checked before the first runs."""
    stems: dict[str, Path] = {}
    for path in rasters:
        if stems.setdefault(path.stem, path) != path:
            raise ParamsError(
                f"{path}: {stems[path.stem]} has its name; both write {path.stem}.classes.tif "
                "into the same folder (predict them into different --out folders)"
            )
    for path in rasters:  # a bad one is named before anything is written
        scene_size(scene_record(path, spec))
    import rasterio

    lut = palette(info)
    written = []
    for path in rasters:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), SceneReader(path, spec) as reader:
            if reader.crs is None:
                warn(f"{path}: no CRS; its predictions carry none either")
            outputs = Outputs.for_scene(out_dir, path, probabilities, preview)
            predict_scene(predictor, reader, outputs, lut, progress)
        written.append(outputs)
    return written
