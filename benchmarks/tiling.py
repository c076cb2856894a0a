"""Tiling throughput and peak memory: the project's tile stage against a plain whole-image
implementation of LandCover.ai's official split.py, on the same synthetic GeoTIFF scene.

* ``project``: ``plan_tiling`` -> ``prepare_store`` -> ``tile_scene`` -> ``finalize_store``,
  the tile stage's code path for one scene (windowed rasterio reads, one tile-row strip at a
  time, into the store's memmaps).
  ``project`` decodes with GDAL on every core, as the tile stage does for a single scene;
  ``project_1thread`` on one, like the baseline.
* ``official``: split.py as published: ``cv2.imread`` of the whole image and the whole mask,
  512x512 slices, ``cv2.imwrite`` of each tile (image ``.jpg``, mask ``.png``).

The scene is written as the synthetic archive writes it (deflate, predictor 2, 256-px blocks):
a synthetic scene repeated (mirrored) up to the requested size, so a 9000x9500 scene costs
seconds, not the minutes ``synth_scene`` would take at that size. MB/s counts the decoded input
pixels (image 3 bytes + mask 1 byte per pixel). Each method runs in a subprocess of its own per
scene, which reports its time and its memory high-water marks: ``VmHWM`` (peak RSS, which counts
the file pages of the store's memmaps the process has touched) and the peak of ``RssAnon``
(sampled every 5 ms: the process's own allocations), both also above the RSS after imports.

    python benchmarks/tiling.py                        # 1600x1700 and 9000x9500
    python benchmarks/tiling.py --sizes 1100x1200 --out tiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TILE = 512
METHODS = ("project", "project_1thread", "official")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonPeak:
    """Samples RssAnon every 5 ms on a thread; ``peak_kb`` is the largest value seen."""

    def __init__(self) -> None:
        self.peak_kb = _status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))


def write_scene(folder: Path, height: int, width: int, seed: int = 0) -> tuple[Path, Path]:
    """images/<name>.tif and masks/<name>.tif: a synthetic scene mirrored up to height x width."""
    from pipeline.synthetic.archive import _write_geotiffs
    from pipeline.synthetic.scene import synth_scene

    base_h, base_w = min(height, 1600), min(width, 1700)
    image, mask = synth_scene(base_h, base_w, np.random.default_rng(seed))
    reps = (-(-height // base_h), -(-width // base_w))

    def grow(array: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        # Mirror alternate copies so that no seam is a hard edge.
        row = np.concatenate(
            [array if j % 2 == 0 else array[:, ::-1] for j in range(reps[1])], axis=1
        )
        full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps[0])], axis=0)
        return np.ascontiguousarray(full[:height, :width])

    name = f"scene_{height}x{width}"
    return _write_geotiffs(folder, name, grow(image), grow(mask), (500_000.0, 600_000.0))


def tile_project(image: Path, mask: Path, out: Path, threads: int) -> int:
    from pipeline.data import tiling
    from pipeline.data.catalog import LANDCOVERAI
    from pipeline.data.store import StoreMeta

    meta = StoreMeta(dataset="landcoverai", tile_size=TILE, class_names=LANDCOVERAI.class_names)
    record = tiling.SceneRecord(scene=image.stem, image=image, mask=mask, split="train")
    plan = tiling.plan_tiling([record], meta)
    build = tiling.prepare_store(plan, out)
    for scene in build.pending:
        tiling.tile_scene(scene, build.directory, meta, threads)
    return len(tiling.finalize_store(plan, out))


def tile_official(image: Path, mask: Path, out: Path) -> int:
    """LandCover.ai's split.py, one scene: whole-image reads, a file per tile."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    img = cv2.imread(str(image))
    msk = cv2.imread(str(mask))
    if img is None or msk is None or img.shape[:2] != msk.shape[:2]:
        raise RuntimeError(f"{image}, {mask}: unreadable or of different sizes")
    k = written = 0
    for y in range(0, img.shape[0], TILE):
        for x in range(0, img.shape[1], TILE):
            img_tile = img[y : y + TILE, x : x + TILE]
            mask_tile = msk[y : y + TILE, x : x + TILE]
            if img_tile.shape[0] == TILE and img_tile.shape[1] == TILE:
                cv2.imwrite(str(out / f"{image.stem}_{k}.jpg"), img_tile)
                cv2.imwrite(str(out / f"{image.stem}_{k}_m.png"), mask_tile)
                written += 1
            k += 1
    return written


def child(method: str, image: Path, mask: Path, out: Path) -> dict[str, Any]:
    """One method on one scene in this (fresh) process: seconds and memory marks."""
    import cv2  # noqa: F401 - both methods' imports before the baseline RSS is read

    from pipeline.data import tiling  # noqa: F401

    base_kb = _status_kb("VmRSS")
    work: Any = {
        "project": partial(tile_project, threads=cores()),  # as the tile stage, one scene
        "project_1thread": partial(tile_project, threads=1),
        "official": tile_official,
    }[method]
    with AnonPeak() as anon:
        started = time.perf_counter()
        tiles = work(image, mask, out)
        seconds = time.perf_counter() - started
    hwm_kb = _status_kb("VmHWM")
    return {
        "tiles": tiles,
        "seconds": seconds,
        "rss_after_imports_mb": base_kb / 1024,
        "peak_rss_mb": hwm_kb / 1024,
        "peak_anon_mb": anon.peak_kb / 1024,
    }


def run_child(method: str, image: Path, mask: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, __file__, "--child", method, str(image), str(mask), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{method} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(
    *,
    sizes: tuple[tuple[int, int], ...] = ((1600, 1700), (9000, 9500)),
    repeats: int = 2,
    work: Path | None = None,
) -> dict[str, Any]:
    """Write each scene once, then time every method ``repeats`` times (best kept, each run in
    a fresh subprocess; peak memory is the largest of the runs)."""
    import shutil

    try:
        import cv2  # noqa: F401
    except ImportError as exc:  # the baseline is defined by cv2 (split.py)
        raise SystemExit(f"cv2 is not installed in this environment: {exc}") from None
    work = work or Path(tempfile.mkdtemp(prefix="sop-bench-tiling-"))
    rows: list[dict[str, Any]] = []
    for height, width in sizes:
        started = time.perf_counter()
        image, mask = write_scene(work / "scenes", height, width)
        print(
            f"scene {height}x{width} written in {time.perf_counter() - started:.0f} s", flush=True
        )
        input_mb = height * width * 4 / 1e6
        file_mb = (image.stat().st_size + mask.stat().st_size) / 1e6
        results: dict[str, dict[str, Any]] = {}
        for method in METHODS:
            runs = []
            for attempt in range(repeats):
                out = work / "out" / f"{method}-{height}x{width}-{attempt}"
                runs.append(run_child(method, image, mask, out))
                shutil.rmtree(out, ignore_errors=True)
            best = min(runs, key=lambda r: r["seconds"])
            results[method] = {
                **best,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "peak_anon_mb": max(r["peak_anon_mb"] for r in runs),
                "mb_s": input_mb / best["seconds"],
            }
        speedup = results["project"]["mb_s"] / results["official"]["mb_s"]
        for method, r in results.items():
            row = {
                "scene": f"{height}x{width}",
                "method": method,
                "input_mb": round(input_mb, 1),
                "geotiff_file_mb": round(file_mb, 1),
                "tiles": r["tiles"],
                "seconds": round(r["seconds"], 3),
                "mb_s": round(r["mb_s"], 1),
                "rss_after_imports_mb": round(r["rss_after_imports_mb"], 1),
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "peak_rss_above_imports_mb": round(r["peak_rss_mb"] - r["rss_after_imports_mb"], 1),
                "peak_anon_mb": round(r["peak_anon_mb"], 1),
                "threads": cores() if method == "project" else 1,
                "speedup_vs_official": round(r["mb_s"] / results["official"]["mb_s"], 2),
            }
            rows.append(row)
            print(
                f"{row['scene']:>10s} {method:8s} {row['tiles']:4d} tiles {row['seconds']:7.2f} s "
                f"{row['mb_s']:7.1f} MB/s  peak RSS {row['peak_rss_mb']:7.1f} MB "
                f"(+{row['peak_rss_above_imports_mb']:.1f} over imports), "
                f"peak anon {row['peak_anon_mb']:.1f} MB",
                flush=True,
            )
        print(f"{height}x{width}: project / official = x{speedup:.2f} ({cores()} threads)")
        image.unlink()
        mask.unlink()
    return {"tile_size": TILE, "repeats": repeats, "rows": rows}


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        method, image, mask, out = sys.argv[2:]
        print(json.dumps(child(method, Path(image), Path(mask), Path(out))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(1600, 1700), (9000, 9500)])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = run(sizes=tuple(args.sizes), repeats=args.repeats)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
