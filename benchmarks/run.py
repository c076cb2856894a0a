"""Run the CPU benchmark suite (data path, tiling) and write benchmarks/results.md.

    python benchmarks/run.py                 # the sizes recorded in results.md (a few minutes)
    python benchmarks/run.py --quick         # tiny sizes, a smoke run
    make bench                               # the same as the first line

The results file holds the date, the machine (CPU model, cores, RAM), the git commit and every
figure as Markdown tables; it is overwritten on each run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import data_path  # noqa: E402
import demo_stages  # noqa: E402
import tiling  # noqa: E402

RESULTS = HERE / "results.md"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": f"{usable} usable ({os.cpu_count()} logical)",
        "ram": ram,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}"


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(row[key]) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def update_section(path: Path, name: str, body: str) -> None:
    """Replace the ``name`` section of the results file (between its markers), or append it.

    ``make bench`` and ``make bench-gpu`` run on different machines; each rewrites only its own
    section, which carries its own date, machine and commit.
    """
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else RESULTS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


RESULTS_HEADER = """# Benchmark results

`make bench` (CPU: `python benchmarks/run.py`) and `make bench-gpu` (`python benchmarks/gpu.py`)
each rewrite their own section below, with the date, machine and commit it was measured on.
"""


def render(data: dict[str, Any], tile: dict[str, Any], info: dict[str, Any]) -> str:
    m = info["machine"]
    lines = [
        "## CPU: data path and tiling",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; Python {m['python']}, "
        f"{m['os']}",
        f"- Git commit: {info['commit']}",
        f"- Command: `{info['command']}` ({info['seconds']:.0f} s in all)",
        "",
        "### Data path (`benchmarks/data_path.py`)",
        "",
        f"Samples/s delivered by the training DataLoader from a synthetic tile store of "
        f"{data['tiles']} tiles of {data['tile_size']} px, against loaders that decode one PNG or "
        f"JPEG (quality 95) file per sample with PIL (mask PNG), measured side by side in one "
        f"run, {data['seconds_per_measurement']:g} s each after the first batch. "
        f"`pretext_loader`: StoreTiles batches out of the DataLoader (uint8 sources, each tile "
        f"resized to {data['source']} px in the worker; baselines: decode, then the same resize); "
        f"`pretext_sampled`: the same plus the batched SOP sampler (subimage {data['subimage']}, "
        "target mask) in the main process on one CPU thread, as a CPU training step runs it (on "
        "a GPU the sampler runs on the device); `segmentation`: SegmentationTiles with "
        f"training_augmentation (crop {data['crop']}, flips and quarter turns), image and mask. "
        "Every loader uses the project's collate. Per worker = store samples/s / workers.",
        "",
        table(
            data["rows"],
            [
                ("case", "case"),
                ("workers", "workers"),
                ("batch_size", "batch"),
                ("store_samples_s", "store samples/s"),
                ("store_per_worker_samples_s", "store per worker"),
                ("png_samples_s", "PNG samples/s"),
                ("jpg_samples_s", "JPEG samples/s"),
                ("ratio_vs_png", "store / PNG"),
                ("ratio_vs_jpg", "store / JPEG"),
            ],
        ),
        "",
        "### Tiling (`benchmarks/tiling.py`)",
        "",
        "MB/s of decoded GeoTIFF input (image 3 + mask 1 byte per pixel; deflate-compressed "
        "GeoTIFFs as the synthetic archive writes them) through the tile stage's code path "
        "(`project`) and through LandCover.ai's split.py as published (`official`: cv2.imread "
        "of the whole image and mask, 512x512 slices, cv2.imwrite .jpg/.png per tile). Each "
        f"method runs in a fresh subprocess per scene (best of {tile['repeats']} for time). "
        "Peak RSS is VmHWM, which includes the file pages of the store's memmaps the process "
        "touched; peak anon is the sampled peak of RssAnon (the process's own allocations).",
        "",
        table(
            tile["rows"],
            [
                ("scene", "scene"),
                ("method", "method"),
                ("threads", "threads"),
                ("tiles", "tiles"),
                ("input_mb", "input MB"),
                ("geotiff_file_mb", "file MB"),
                ("seconds", "seconds"),
                ("mb_s", "MB/s"),
                ("speedup_vs_official", "x official"),
                ("rss_after_imports_mb", "RSS after imports MB"),
                ("peak_rss_mb", "peak RSS MB"),
                ("peak_rss_above_imports_mb", "peak RSS over imports MB"),
                ("peak_anon_mb", "peak anon MB"),
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def render_demo(
    figures: dict[str, Any], info: dict[str, Any], cold: dict[str, Any] | None = None
) -> str:
    m = info["machine"]
    per_invocation = figures["per_invocation_share"]
    lines = [
        "## CPU: the demo, stage by stage (`benchmarks/demo_stages.py`)",
        "",
        f"- Date: {info['date']}; machine: {m['cpu']}, {m['cores']} cores; commit {info['commit']}",
        f"- Command: `{figures['command']}` {figures['how']}, every stage process recording "
        "its times (`SOP_TIMINGS`, `pipeline/timing.py`)",
        "",
        f"Total {figures['total_s']} s for {figures['stages']} stage invocations, of which the "
        f"stages' work is {figures['work_s']} s. Orchestration:",
        "",
        f"- in the stage processes: {figures['stage_overhead_s']} s "
        f"({figures['overhead_per_invocation_s']} s per invocation: interpreter start, imports, "
        "Prefect flow run, MLflow run);",
        f"- DVC between stages: {figures['between_stages_s']} s;",
        f"- once per repro: {figures['once_s']} s (start-up: the `sop` command's imports, "
        "Prefect's temporary server (on a project's first run it creates its database, about 8 s "
        "here), the MLflow parent run, DVC loading the pipeline, while the stage host imports "
        "the stack beside them; the end: the parent run's artifacts, stopping the server).",
        "",
        f"Per stage invocation (the first two): **{per_invocation:.1%} of the total** (target "
        f"< 10%: {'met' if per_invocation < 0.10 else 'not met'}); with the one-time part as "
        f"well: {figures['orchestration_share']:.1%}.",
        "",
        table(
            figures["kinds"],
            [
                ("stage", "stage"),
                ("invocations", "invocations"),
                ("wall_s", "wall s"),
                ("work_s", "work s"),
                ("overhead_s", "overhead s"),
                ("overhead_per_invocation_s", "overhead per invocation s"),
            ],
        ),
        "",
        *(
            [
                f"The same demo with `sop repro --cold` (every stage a fresh process, no stage "
                f"host): total {cold['total_s']} s, work {cold['work_s']} s, overhead "
                f"{cold['stage_overhead_s']} s in the stages "
                f"({cold['overhead_per_invocation_s']} s per invocation) and "
                f"{cold['outside_stages_s']} s outside them: "
                f"{cold['orchestration_share']:.1%} of its total.",
                "",
            ]
            if cold
            else []
        ),
        "<details><summary>Every invocation</summary>",
        "",
        table(
            figures["rows"],
            [
                ("stage", "stage"),
                ("wall_s", "wall s"),
                ("work_s", "work s"),
                ("overhead_s", "overhead s"),
            ],
        ),
        "",
        "</details>",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per data-path measurement")
    parser.add_argument("--scenes", type=int, default=4, help="synthetic scenes for the store")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    parser.add_argument(
        "--no-demo", action="store_true", help="skip the demo's stage times (~7 min)"
    )
    parser.add_argument(
        "--demo-only", action="store_true", help="only the demo (keep the CPU section)"
    )
    parser.add_argument("--demo-timings", type=Path, help="tabulate this SOP_TIMINGS file")
    parser.add_argument("--demo-total", type=float, help="that run's wall seconds")
    parser.add_argument(
        "--demo-cold", type=Path, help="figures of a `sop repro --cold` run (demo_stages.py --out)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    data: dict[str, Any] = {}
    tile: dict[str, Any] = {}
    if args.demo_only:
        pass
    elif args.quick:
        data = data_path.run(
            scenes=2, height=1100, width=1200, workers=(1,), seconds=0.5, pretext_batch=8,
            seg_batch=4,
        )  # fmt: skip
        tile = tiling.run(sizes=((1100, 1200),), repeats=1)
    else:
        data = data_path.run(scenes=args.scenes, workers=tuple(args.workers), seconds=args.seconds)
        tile = tiling.run()
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "commit": git_commit(),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "seconds": time.perf_counter() - started,
    }
    if data:
        update_section(args.out, "cpu", render(data, tile, info))
    if not (args.quick or args.no_demo):
        if args.demo_timings:
            figures = demo_stages.from_timings(args.demo_timings, args.demo_total)
        else:
            figures = demo_stages.run()
        cold = json.loads(args.demo_cold.read_text()) if args.demo_cold else None
        update_section(args.out, "demo", render_demo(figures, info, cold))
    print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "data_path": data, "tiling": tile}, indent=2)
        )


if __name__ == "__main__":
    main()
