"""`sop predict` on the CPU: pixels per second with the demo's ResNet cell, and peak memory for
scenes of 4k x 4k and 20k x 20k pixels (flat in the scene's size, or not).

Every measurement runs in a process of its own and reports its peak RSS (``VmHWM``, read by the
process itself at its end: ``ru_maxrss`` of a forked child counts the parent's pages it shared
before its exec, and the parent has just written a 20k scene):

* ``resnet cell``: the command's path (``load_predictor`` and ``predict_files``, as
  ``sop predict <cell> <scene> --out ...`` calls them) with the demo's ResNet cell
  (``resnet_demo``, window 128, overlap 0.25), on synthetic GeoTIFFs of 2048, 4096 and 20480
  px a side. Without a trained demo (``make demo``) the cell is an untrained ``resnet_demo``
  segmenter with the demo's params: the same architecture, so the same speed.
* ``1x1 conv``: ``pipeline.predict.predict_files`` with a one-layer pixel-wise model in the
  cell's place, on 4096 and 20480 px a side: what grows with the scene (reading, blending,
  writing the COG) shows alone, without the model's own memory, which is one batch's whatever
  the scene.

The scenes are tiled, deflated 3-band uint8 GeoTIFFs of smooth synthetic fields, written by
strips of rows (so writing them is flat in memory too).

    python benchmarks/predict.py                  # the sizes above -> results.md, section predict
    python benchmarks/predict.py --quick          # small sizes, a smoke run (results not written)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

SECTION = "predict"
CELL_SIDES = [2048, 4096, 20480]  # px a side
CONV_SIDES = [4096, 20480]
DEMO_PARAMS = ROOT / "demo" / "params.yaml"
DEMO_CELL = ROOT / "demo/models/finetune/landcoverai/resnet_demo-sop-1.0-s0/best.safetensors"


def write_scene(path: Path, side: int, seed: int = 0) -> Path:
    """A (3, side, side) uint8 GeoTIFF of smooth fields, written 512 rows at a time."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    waves = rng.uniform(0.002, 0.02, (3, 2))
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "crs": "EPSG:32634", "transform": Affine(0.5, 0, 500000.0, 0, -0.5, 4200000.0),
    }  # fmt: skip
    cols = np.arange(side)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, side, 512):
            rows = np.arange(top, min(top + 512, side))[:, None]
            bands = [
                127 + 100 * np.sin(fx * cols + fy * rows) * np.cos(fy * cols - fx * rows)
                for fx, fy in waves
            ]
            strip = np.stack(bands).astype(np.uint8)
            dst.write(strip, window=Window(0, top, side, strip.shape[1]))
    return path


def demo_cell(folder: Path) -> tuple[Path, str]:
    """The demo's trained ResNet cell, or an untrained one of its architecture and params."""
    if DEMO_CELL.is_file():
        return DEMO_CELL, f"the demo's trained cell ({DEMO_CELL.relative_to(ROOT)})"
    from pipeline import layout
    from pipeline.config import load_params
    from pipeline.models.segmenters import create_segmenter
    from pipeline.models.weights import save_encoder

    params = load_params(DEMO_PARAMS)
    model = create_segmenter("resnet_demo", 5, params.finetune.input_size_of("resnet_demo"))
    folder.mkdir(parents=True, exist_ok=True)
    save_encoder(model, folder / layout.BEST_WEIGHTS_FILE)
    run = {"dataset": "landcoverai", "backbone": "resnet_demo", "init": "sop"}
    (folder / layout.RUN_FILE).write_text(json.dumps(run))
    return folder / layout.BEST_WEIGHTS_FILE, "an untrained resnet_demo segmenter (no make demo)"


def measured(command: list[str]) -> dict[str, Any]:
    """Run ``command`` in its own process: its seconds and what it prints last (JSON)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(command)}\n{done.stdout}")
    child: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, **child}


def child(model: str, scene: Path, out: Path) -> None:
    """``sop predict``'s path (the cell's weights, or the 1x1 conv, through predict_files);
    prints the RSS after imports and the prediction's own seconds as JSON."""
    import torch
    from torch import nn

    from pipeline.config import load_params
    from pipeline.data.catalog import CATALOG
    from pipeline.models.inits import IMAGENET
    from pipeline.predict import InputBands, Predictor, load_predictor, predict_files

    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if model == "conv":
        torch.manual_seed(0)
        predictor = Predictor(nn.Conv2d(3, 5, 1).eval(), IMAGENET, 5, 128, 0.25, 8)
    else:
        params = load_params(DEMO_PARAMS)
        predictor, _ = load_predictor(Path(model), params, ROOT / "demo", 0.25, 8, "cpu")
    start = time.perf_counter()
    predict_files(predictor, CATALOG["landcoverai"], InputBands(), [scene], out, preview=True,
                  progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    hwm_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    print(json.dumps({
        "rss_after_imports_mb": round(rss / 2**20, 1), "predict_s": seconds,
        "peak_rss_mb": round(hwm_kb / 1024, 1),
    }))  # fmt: skip


def run(cell_sides: list[int], conv_sides: list[int], work: Path) -> dict[str, Any]:
    weights, which = demo_cell(work / "cell")
    rows = []
    for case, sides in (("resnet cell", cell_sides), ("1x1 conv", conv_sides)):
        for side in sides:
            scene = work / f"scene-{side}.tif"
            if not scene.exists():
                write_scene(scene, side)
            out = work / f"out-{case.split()[0]}-{side}"
            model = str(weights) if case == "resnet cell" else "conv"
            figures = measured([sys.executable, __file__, "--child", model, str(scene), str(out)])
            figures |= {"case": case, "scene": f"{side}x{side}", "pixels": side * side}
            figures["mpx_s"] = round(side * side / figures["predict_s"] / 1e6, 3)
            figures["seconds"] = round(figures["seconds"], 1)
            figures["predict_s"] = round(figures["predict_s"], 1)
            rows.append(figures)
            print(json.dumps(figures), flush=True)
            for path in out.glob("*"):
                path.unlink()
    return {"cell": which, "rows": rows}


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for case in dict.fromkeys(row["case"] for row in rows):
        mine = [row for row in rows if row["case"] == case]
        if len(mine) > 1:  # against the 4k scene where there is one, as the issue asks
            small = next((row for row in mine if row["scene"] == "4096x4096"), mine[0])
            large = mine[-1]
            ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
            lines.append(
                f"- {case}: peak RSS {large['scene']} / {small['scene']} = **{ratio:.2f}x** "
                f"for {large['pixels'] / small['pixels']:.0f}x the pixels"
            )
    return lines


COLUMNS = [
    ("case", "model"), ("scene", "scene"), ("predict_s", "predict s"), ("mpx_s", "Mpx/s"),
    ("seconds", "process s"), ("rss_after_imports_mb", "RSS after imports MB"),
    ("peak_rss_mb", "peak RSS MB"),
]  # fmt: skip


def render(figures: dict[str, Any], info: dict[str, Any]) -> str:
    from run import table

    m = info["machine"]
    return "\n".join(
        [
            "## CPU: `sop predict` (`benchmarks/predict.py`)",
            "",
            f"- Date: {info['date']}; machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; "
            f"commit {info['commit']}",
            f"- Command: `{info['command']}` ({info['seconds']:.0f} s in all)",
            f"- The ResNet cell: {figures['cell']}; window 128, overlap 0.25, batch 8, "
            "class map + preview (no probabilities)",
            "- Each row is one process: Mpx/s over the prediction (windows, blending, the "
            "COG), the process's wall time with its imports, its peak RSS (`VmHWM`). "
            "`1x1 conv`: a pixel-wise model in the cell's place, so that what grows with the "
            "scene shows alone (see the script's docstring).",
            "- GPU: pending (no GPU was lent to the session that measured this).",
            "",
            table(figures["rows"], COLUMNS),
            "",
            *ratios(figures["rows"]),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; results not written")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODEL", "SCENE", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    from run import RESULTS, git_commit, machine, update_section

    started = time.perf_counter()
    cell_sides, conv_sides = ([256], [512, 1024]) if args.quick else (CELL_SIDES, CONV_SIDES)
    with tempfile.TemporaryDirectory(prefix="sop-bench-predict-") as work:
        figures = run(cell_sides, conv_sides, Path(work))
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "commit": git_commit(),
        "command": "python benchmarks/predict.py" + (" --quick" if args.quick else ""),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"info": info, **figures}, indent=2))
    text = render(figures, info)
    print(text)
    if not args.quick:
        update_section(RESULTS, SECTION, text)


if __name__ == "__main__":
    main()
