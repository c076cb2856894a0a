"""The tile store: every dataset's tiles as contiguous uint8 arrays plus one index table.

Layout of a store folder::

    images.npy      (N, T, T, 3) uint8, RGB
    masks.npy       (N, T, T)    uint8 class ids (absent for unlabelled imagery)
    index.parquet   one row per tile; its schema metadata holds the StoreMeta JSON

Why ``.npy`` memmaps: a DataLoader worker reads a tile with one slice of a memory-mapped file,
with no decoding and no per-file open, and any number of forked or spawned workers share the OS
page cache. PNG or JPEG tiles cost a decode per sample (see README, "Tile store"). The arrays are
allocated once at their final size, so scene workers write their own slices in parallel and the
store never exists twice on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.subsets import fraction_column, membership
from pipeline.errors import DataError, DiskFullError
from pipeline.files import NO_SPACE, atomic_write

STORE_VERSION = 1
IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
INDEX_FILE = "index.parquet"
_META_KEY = b"sop.store"


@dataclass(frozen=True)
class StoreMeta:
    """What a reader needs besides the arrays: tile size and the class table."""

    dataset: str
    tile_size: int
    class_names: tuple[str, ...]
    remainder: str = "drop"
    class_colors: tuple[tuple[int, int, int] | None, ...] = ()
    ignore_index: int | None = None
    # Classes that enter the mean IoU (DeepGlobe leaves "unknown" out); empty: all but ignore.
    evaluated_classes: tuple[int, ...] = ()
    has_masks: bool = True
    label_fractions: tuple[float, ...] = ()
    subset_seed: int = 0
    version: int = STORE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StoreMeta:
        raw = json.loads(text)
        raw["class_names"] = tuple(raw["class_names"])
        raw["class_colors"] = tuple(
            tuple(c) if c is not None else None for c in raw["class_colors"]
        )
        raw["label_fractions"] = tuple(raw["label_fractions"])
        raw["evaluated_classes"] = tuple(raw["evaluated_classes"])
        return cls(**raw)


def hist_column(class_id: int) -> str:
    return f"hist_{class_id}"


def allocate(directory: Path, n_tiles: int, tile_size: int, has_masks: bool) -> None:
    """Create the arrays at their final size, their disk space reserved up front.

    The workers write through memory maps, and a write through a map onto a full disk kills the
    process with SIGBUS, naming nothing. Reserving the blocks here turns a disk too small for
    the store into a DiskFullError before any tile is cut.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shape = (n_tiles, tile_size, tile_size)
    arrays = [(IMAGES_FILE, (*shape, 3))] + ([(MASKS_FILE, shape)] if has_masks else [])
    for name, array_shape in arrays:
        path = directory / name
        try:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=array_shape).flush()
            with open(path, "r+b") as handle:
                _reserve(handle.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            if exc.errno not in NO_SPACE:
                raise
            needed = n_tiles * tile_size * tile_size * (4 if has_masks else 3)
            raise DiskFullError(
                f"{directory}: no space left for the tile store ({needed / 1e9:.2f} GB for "
                f"{n_tiles} tiles, {shutil.disk_usage(directory).free / 1e9:.2f} GB free); free "
                "space or move the project and rerun"
            ) from None


def _reserve(fd: int) -> None:
    """Allocate a file's blocks; a file system that cannot keeps the file sparse."""
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise


Memmap = np.memmap[Any, np.dtype[np.uint8]]


def open_arrays(directory: Path, mode: Literal["r", "r+"] = "r") -> tuple[Memmap, Memmap | None]:
    """Memory-map the store's arrays; ``mode='r+'`` for the tiling workers."""
    images: Memmap = np.load(directory / IMAGES_FILE, mmap_mode=mode)
    masks_path = directory / MASKS_FILE
    masks: Memmap | None = np.load(masks_path, mmap_mode=mode) if masks_path.exists() else None
    return images, masks


def add_label_fractions(
    index: pd.DataFrame,
    n_classes: int,
    ignore_index: int | None,
    fractions: tuple[float, ...],
    seed: int,
    split: str = "train",
) -> pd.DataFrame:
    """Mark nested, class-complete subsets of ``split`` in ``in_frac_<f>`` columns."""
    index = index.copy()
    counted = [c for c in range(n_classes) if c != ignore_index]
    rows = np.flatnonzero((index["split"] == split).to_numpy())
    hist = index.iloc[rows][[hist_column(c) for c in counted]].to_numpy(dtype=np.int64)
    for fraction, mask in membership(hist, fractions, seed).items():
        column = np.zeros(len(index), dtype=bool)
        column[rows[mask]] = True
        index[fraction_column(fraction)] = column
    return index


def write_index(directory: Path, index: pd.DataFrame, meta: StoreMeta) -> Path:
    """Write index.parquet atomically, with the StoreMeta in its schema metadata."""
    table = pa.Table.from_pandas(index.reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _META_KEY: meta.to_json()}
    )
    target = directory / INDEX_FILE
    with atomic_write(target) as handle:
        pq.write_table(table, handle)
    return target


def read_index(directory: Path) -> tuple[pd.DataFrame, StoreMeta]:
    path = directory / INDEX_FILE
    if not path.exists():
        raise DataError(f"{path}: no tile index here; run the tile stage first")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise DataError(f"{path}: not a tile index written by this pipeline (no store metadata)")
    return table.to_pandas(), StoreMeta.from_json(raw.decode())


def index_hash(directory: Path) -> str:
    """sha256 of index.parquet: the identity of a tile store, tagged on every run that reads it."""
    digest = hashlib.sha256()
    with open(directory / INDEX_FILE, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TileStore:
    """Read access to a finished store; safe to use from DataLoader worker processes.

    The memmaps are opened lazily in the process that first reads, so a store object can be
    pickled into spawned workers without copying the arrays.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index, self.meta = read_index(directory)
        self._arrays: tuple[Memmap, Memmap | None] | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _open(self) -> tuple[Memmap, Memmap | None]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = open_arrays(self.directory)
            self._pid = os.getpid()
        return self._arrays

    def image(self, row: int) -> npt.NDArray[np.uint8]:
        tile: npt.NDArray[np.uint8] = self._open()[0][row]
        return tile

    def mask(self, row: int) -> npt.NDArray[np.uint8]:
        masks = self._open()[1]
        if masks is None:
            raise DataError(f"{self.directory}: this store holds unlabelled imagery (no masks)")
        tile: npt.NDArray[np.uint8] = masks[row]
        return tile

    def rows(
        self, split: str | None = None, fraction: float | None = None
    ) -> npt.NDArray[np.int64]:
        """Array positions of the tiles in ``split`` (and in the ``fraction`` label subset)."""
        keep = np.ones(len(self.index), dtype=bool)
        if split is not None:
            keep &= (self.index["split"] == split).to_numpy()
        if fraction is not None:
            column = fraction_column(fraction)
            if column not in self.index:
                raise DataError(
                    f"{self.directory / INDEX_FILE}: no {fraction:g} label subset; "
                    f"it holds {list(self.meta.label_fractions)} (data.label_fractions)"
                )
            keep &= self.index[column].to_numpy(dtype=bool)
        return self.index["row"].to_numpy(dtype=np.int64)[keep]
