"""LoveDA's test-server submission: a cell's predictions on LoveDA's Test images, zipped.

LoveDA's Test split has hidden labels; its benchmark (the LoveDA semantic segmentation
challenge on CodaLab) scores a zip of single-channel uint8 PNGs, one per Test image, named as
the image is (``<id>.png``; Urban and Rural ids are disjoint) and lying at the zip's root. A
PNG's values are class indices without no-data: background 0 ... agriculture 6, the mask value
minus 1, as the official ``predict.py`` writes its argmax over the 7 classes.

The pipeline keeps LoveDA's mask values as its class ids (0 no-data, ignored in training; 1
background ... 7 agriculture), so a segmenter has a no-data output the server has no value for:
the submission's argmax runs over the evaluated classes only, and class k is written as k - 1.
Whole 1024x1024 images are predicted (windowed and blended as any scene, :func:`predict_image`),
read from the download stage's extracted Test folders (the tile store keeps tiles, not images).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from pipeline import layout
from pipeline.data.catalog import LOVEDA, loveda_records
from pipeline.errors import DataError
from pipeline.files import atomic_write
from pipeline.predict import Predictor, predict_image

LOVEDA_NAME = LOVEDA.name
# The server's value of each of the pipeline's LoveDA classes (no-data has none).
SERVER_VALUES = {c: c - 1 for c in LOVEDA.evaluated_classes}
DROPPED = -1.0e4  # a dropped class's logit: below any a segmenter gives
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every member's date: the same images give the same bytes


@dataclass(frozen=True)
class SubmissionImage:
    """One LoveDA Test image: its official id (the file's stem) and where it lies."""

    id: str
    path: Path


class OnlyClasses(nn.Module):
    """A segmenter whose other classes' logits are pushed below every kept one's."""

    def __init__(self, model: nn.Module, keep: Sequence[int], classes: int) -> None:
        super().__init__()
        self.model = model
        self.dropped = [c for c in range(classes) if c not in set(keep)]

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.model(images)
        if not self.dropped:
            return logits
        index = torch.tensor(self.dropped, device=logits.device)
        return logits.index_fill(1, index, DROPPED)


def server_predictor(predictor: Predictor) -> Predictor:
    """``predictor`` choosing among LoveDA's evaluated classes only (never no-data)."""
    if predictor.num_classes != len(LOVEDA.class_names):
        raise DataError(
            f"a {predictor.num_classes}-class segmenter; LoveDA's has "
            f"{len(LOVEDA.class_names)} ({', '.join(LOVEDA.class_names)})"
        )
    model = OnlyClasses(predictor.model, tuple(SERVER_VALUES), predictor.num_classes)
    return replace(predictor, model=model)


def server_values(ids: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """The pipeline's LoveDA class ids as the server's values (0..6)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for ours, theirs in SERVER_VALUES.items():
        lut[ours] = theirs
    values = lut[np.asarray(ids, dtype=np.int64)]
    if (values == 255).any():
        raise DataError("a prediction of LoveDA's no-data class, which the server has no value for")
    return values


# --- the Test images -------------------------------------------------------------------------


def extracted_folders(root: Path, dataset: str = LOVEDA_NAME) -> list[Path]:
    """The download stage's extracted folders (its ``source.json``), as the tile stage reads."""
    manifest = layout.raw_dir(root, dataset) / layout.SOURCE_FILE
    if not manifest.is_file():
        raise DataError(f"{manifest}: missing; run the download stage for {dataset} first")
    return [root / source["folder"] for source in json.loads(manifest.read_text())["sources"]]


def loveda_test_images(folders: Sequence[Path]) -> list[SubmissionImage]:
    """Every image of LoveDA's Test/{Urban,Rural}/images_png under ``folders``, in id order."""
    found: dict[str, SubmissionImage] = {}
    for folder in folders:
        for record in loveda_records(folder):
            if record.split != "predict":
                continue
            image = SubmissionImage(record.image.stem, record.image)
            other = found.setdefault(image.id, image)
            if other.path != image.path:
                raise DataError(
                    f"{image.path}: {other.path} has its id; the server takes one {image.id}.png"
                )
    if not found:
        where = ", ".join(str(f) for f in folders)
        raise DataError(f"{where}: no LoveDA Test/{{Urban,Rural}}/images_png images")
    return sorted(found.values(), key=lambda t: (len(t.id), t.id))


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """An (H, W, 3) uint8 RGB image, decoded with PIL as the tiles are."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read as an image ({exc})") from None


# --- the zip ---------------------------------------------------------------------------------


def png_bytes(values: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


Predict = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.integer]]


def write_zip(
    out: Path, images: Sequence[SubmissionImage], predict: Predict, progress: bool = True
) -> Path:
    """``out``: one ``<id>.png`` of server values per image, at the zip's root; written whole
    beside it and renamed, so an interrupted run leaves no zip."""
    from tqdm import tqdm

    with atomic_write(out) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for image in tqdm(images, unit="image", desc=out.name, disable=not progress):
            pixels = read_image(image.path)
            values = server_values(predict(pixels))
            if values.shape != pixels.shape[:2]:
                raise DataError(f"{image.path}: predicted {values.shape}, not {pixels.shape[:2]}")
            archive.writestr(zipfile.ZipInfo(f"{image.id}.png", ZIP_TIME), png_bytes(values))
    return out


def write_submission(
    predictor: Predictor, images: Sequence[SubmissionImage], out: Path, progress: bool = True
) -> Path:
    """A LoveDA cell's predictions on ``images``, zipped as LoveDA's test server takes them."""
    chosen = server_predictor(predictor)
    return write_zip(out, images, lambda pixels: predict_image(chosen, pixels), progress)
