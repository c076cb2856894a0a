"""Data path throughput: samples/s the training DataLoader delivers from the tile store, against
a loader that decodes one PNG/JPEG file per sample (the common torchgeo-style loader).

Two workloads, each with N DataLoader workers (default 1 and 2):

* ``pretext``: the pretrain task's input. ``StoreTiles`` (memmap reads, each tile resized to
  the source size in the worker) batched by the DataLoader, then the batched SOP sampler
  (``sample_overlap``: crop the subimage, target mask) in the main process, as the training
  step runs it on CPU (on a GPU it runs on the device). Reported twice: the loader alone (uint8
  sources out of the DataLoader) and loader + sampler (what a training step receives).
* ``segmentation``: ``SegmentationTiles`` with ``training_augmentation`` (random crop, flips,
  rot90) at the crop size, image and mask.

The baseline datasets read the same tiles, written once as files by this benchmark (image PNG or
JPEG, mask PNG, as LandCover.ai's split.py writes them), decoded with PIL in ``__getitem__``, then
the same resize or the same albumentations pipeline and the same collate: the only difference is
where the pixels come from. All loaders run side by side in one run on a warm page cache; "per
worker" is samples/s divided by the number of workers.

    python benchmarks/data_path.py                    # defaults: 4 scenes, 1 and 2 workers
    python benchmarks/data_path.py --workers 1 2 4 --seconds 5 --out data_path.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.env import apply_env_defaults

FORMATS = ("png", "jpg")


class RandomRows(Sampler[int]):
    """An endless stream of uniformly drawn indices (a fixed seed: every loader sees the same)."""

    def __init__(self, n: int, total: int, seed: int = 0) -> None:
        self.n, self.total, self.seed = n, total, seed

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng(self.seed).integers(0, self.n, self.total).tolist())

    def __len__(self) -> int:
        return self.total


class FileTiles(Dataset[npt.NDArray[np.uint8]]):
    """Baseline for pretext: one image file decoded with PIL per sample, resized like
    ``StoreTiles``."""

    def __init__(self, images: list[Path], size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> npt.NDArray[np.uint8]:
        from pipeline.data.loaders import resize_tile

        with Image.open(self.images[index]) as image:
            return resize_tile(np.asarray(image.convert("RGB")), self.size)


class FileSegmentation(Dataset[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]]):
    """Baseline for segmentation: image and mask files decoded with PIL, then the same
    albumentations pipeline and per-sample seeding as ``SegmentationTiles``."""

    def __init__(self, images: list[Path], masks: list[Path], augment: Any, seed: int = 0) -> None:
        self.images, self.masks, self.augment, self.seed = images, masks, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        from pipeline.train.seeds import sample_seed

        with Image.open(self.images[index]) as image:
            pixels: npt.NDArray[np.uint8] = np.asarray(image.convert("RGB"))
        with Image.open(self.masks[index]) as mask_file:
            mask: npt.NDArray[np.uint8] = np.asarray(mask_file)
        self.augment.set_random_seed(sample_seed(self.seed, self.epoch, index))
        out = self.augment(image=pixels, mask=mask)
        return out["image"], out["mask"]


def write_tile_files(store_dir: Path, out: Path) -> dict[str, tuple[list[Path], list[Path]]]:
    """Every tile of the store as image files (PNG and JPEG q95) and a PNG mask."""
    from pipeline.data.store import TileStore

    store = TileStore(store_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[list[Path], list[Path]]] = {fmt: ([], []) for fmt in FORMATS}
    for row in range(len(store)):
        mask_path = out / f"{row}_m.png"
        Image.fromarray(np.array(store.mask(row))).save(mask_path)
        image = Image.fromarray(np.array(store.image(row)))
        for fmt in FORMATS:
            path = out / f"{row}.{fmt}"
            image.save(path, quality=95) if fmt == "jpg" else image.save(path)
            files[fmt][0].append(path)
            files[fmt][1].append(mask_path)
    return files


def measure(
    dataset: Dataset[Any],
    n: int,
    batch_size: int,
    workers: int,
    seconds: float,
    step: Callable[[Any], object] | None = None,
) -> float:
    """Samples/s in the steady state: the clock starts after the first batch (worker start-up
    excluded) and stops after ``seconds``; ``step`` is applied to every batch in the main
    process (the part of a training step that prepares its inputs)."""
    from pipeline.data.loaders import Collate

    prefetch = 4
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomRows(n, batch_size * 100_000),
        num_workers=workers,
        drop_last=True,
        prefetch_factor=prefetch if workers else None,
        collate_fn=Collate.for_prefetch(prefetch),  # as the engine's training loader
    )
    iterator = iter(loader)
    first = next(iterator)
    if step is not None:
        step(first)
    started = time.perf_counter()
    samples = 0
    while time.perf_counter() - started < seconds:
        batch = next(iterator)
        if step is not None:
            step(batch)
        samples += batch_size
    elapsed = time.perf_counter() - started
    del iterator  # shuts the workers down
    return samples / elapsed


def run(**options: Any) -> dict[str, Any]:
    """``measure_all`` with torch on one thread in this process (one core, like one worker),
    restored afterwards: the caller's thread count is its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure_all(**options)
    finally:
        torch.set_num_threads(threads)


def measure_all(
    *,
    scenes: int = 4,
    height: int = 1600,
    width: int = 1700,
    workers: tuple[int, ...] = (1, 2),
    seconds: float = 4.0,
    pretext_batch: int = 64,
    seg_batch: int = 16,
    source: int = 224,
    subimage: int = 112,
    crop: int = 448,
    work: Path | None = None,
) -> dict[str, Any]:
    """Build a synthetic store and its file copies under ``work`` and measure every loader."""
    work = work or Path(tempfile.mkdtemp(prefix="sop-bench-data-"))
    apply_env_defaults(work)
    from pipeline.data.store import TileStore
    from pipeline.synthetic import synthetic_tile_store
    from pipeline.train.finetune import SegmentationTiles, training_augmentation
    from pipeline.train.pretrain import StoreTiles
    from pipeline.train.sop import sample_overlap

    started = time.perf_counter()
    store_dir = synthetic_tile_store(work / "data", n_scenes=scenes, height=height, width=width)
    store = TileStore(store_dir)
    n = len(store)
    files = write_tile_files(store_dir, work / "files")
    print(
        f"{n} tiles of {store.meta.tile_size} px (store and files) in "
        f"{time.perf_counter() - started:.0f} s"
    )
    rows = np.arange(n, dtype=np.int64)
    generator = torch.Generator().manual_seed(0)

    def sampler(batch: Tensor) -> object:
        return sample_overlap(batch, source, subimage, generator)

    augment = training_augmentation(crop, flips=True, rot90=True)
    loaders: dict[str, dict[str, Dataset[Any]]] = {
        "pretext": {"store": StoreTiles(store, rows, size=source)},
        "segmentation": {"store": SegmentationTiles(store, rows, augment, seed=0)},
    }
    for fmt in FORMATS:
        images, masks = files[fmt]
        loaders["pretext"][fmt] = FileTiles(images, source)
        loaders["segmentation"][fmt] = FileSegmentation(images, masks, augment, seed=0)

    measured: list[dict[str, Any]] = []
    cases: list[tuple[str, int, Callable[[Any], object] | None]] = [
        ("pretext_loader", pretext_batch, None),
        ("pretext_sampled", pretext_batch, sampler),
        ("segmentation", seg_batch, None),
    ]
    for case, batch_size, step in cases:
        kind = "segmentation" if case == "segmentation" else "pretext"
        for count in workers:
            rates = {
                name: measure(dataset, n, batch_size, count, seconds, step)
                for name, dataset in loaders[kind].items()
            }
            row = {
                "case": case,
                "workers": count,
                "batch_size": batch_size,
                **{f"{name}_samples_s": round(rate, 1) for name, rate in rates.items()},
                "store_per_worker_samples_s": round(rates["store"] / max(count, 1), 1),
                **{f"ratio_vs_{fmt}": round(rates["store"] / rates[fmt], 2) for fmt in FORMATS},
            }
            measured.append(row)
            print(
                f"{case:16s} workers={count}  store {rates['store']:8.1f}/s "
                f"({rates['store'] / max(count, 1):7.1f}/s per worker)  "
                + "  ".join(
                    f"{fmt} {rates[fmt]:7.1f}/s (x{rates['store'] / rates[fmt]:.2f})"
                    for fmt in FORMATS
                ),
                flush=True,
            )
    return {
        "tiles": n,
        "tile_size": store.meta.tile_size,
        "source": source,
        "subimage": subimage,
        "crop": crop,
        "seconds_per_measurement": seconds,
        "rows": measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4, help="synthetic scenes")
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--width", type=int, default=1700)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = run(
        scenes=args.scenes,
        height=args.height,
        width=args.width,
        workers=tuple(args.workers),
        seconds=args.seconds,
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
