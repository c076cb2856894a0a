"""Writes that never leave a torn file behind, and disk-full errors that name the file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from pipeline.errors import DiskFullError
from pipeline.faults import failpoint

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path | str, exc: OSError) -> DiskFullError | None:
    """A one-line DiskFullError naming ``path`` if ``exc`` is out-of-space, else None."""
    if exc.errno not in NO_SPACE:
        return None
    return DiskFullError(
        f"{path}: {os.strerror(exc.errno or errno.ENOSPC).lower()} while writing it; free space "
        "on that disk (or move the project) and rerun: earlier outputs are intact and the stage "
        "resumes"
    )


@contextmanager
def atomic_write(
    path: Path, mode: Literal["w", "wb"] = "wb", point: str | None = None
) -> Iterator[IO[Any]]:
    """Write ``path`` through ``<path>.tmp``, synced and renamed over it only when complete.

    A kill leaves the old file (or none) and possibly a stray ``.tmp``, never a torn ``path``;
    running out of space removes the ``.tmp`` and raises a DiskFullError naming ``path``.
    ``point``: a failpoint (``pipeline.faults``) reached after the bytes are handed to the
    file, before they are synced and renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # Text keeps its line endings as written: the CSV writer chooses its own.
        with open(tmp, mode, newline="" if mode == "w" else None) as handle:
            yield handle
            if point is not None:
                failpoint(point)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = disk_full(path, exc) if isinstance(exc, OSError) else None
        if full is not None:
            raise full from None
        raise


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)
