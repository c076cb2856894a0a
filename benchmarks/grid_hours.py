"""The paper grid's GPU-hours per stage kind, on paper (README, "GPU check").

Each job's work is counted in FLOPs (FlopCounterMode, as benchmarks/gpu.py counts them: one
forward and backward of each model at the paper profile's sizes) and divided by a rate in
FLOP/s. The rate comes from a measured throughput when a GPU check's JSON is given
(``--measured``: its optimised model-only images/s times the case's FLOPs), else from the
published anchors at the same fraction of peak: ResNet-50 training at 224 with AMP on one A100,
2,470 images/s, for the ResNet-50 jobs; a tuned 22M ViT-Small training step at 224 in bf16 on
one H100, 8,003 images/s, for the ViT-S/14 jobs.

    python benchmarks/grid_hours.py                       # the anchors (figures pending)
    python benchmarks/grid_hours.py --measured check.json # a GPU check's own throughput
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import gpu  # noqa: E402
import torch  # noqa: E402

from pipeline.config import Params, load_params  # noqa: E402
from pipeline.zoo import pretext_variant, sop_variant, split_model  # noqa: E402

TILE_PX = 512  # every dataset of the paper profile is tiled at 512 (params.yaml, data.tiling)


@dataclass(frozen=True)
class Tiles:
    train: int
    val: int
    test: int


def deepglobe_tiles(scenes: int = 803, per_scene: int = 25) -> Tiles:
    """803 labelled 2448 px images, 5x5 tiles each (edge tiles overlap), split 70/15/15 by a
    seeded hash of the scene (params.yaml, data.split_fractions): the expected shares."""
    train, val = round(0.70 * scenes), round(0.15 * scenes)
    return Tiles(train * per_scene, val * per_scene, (scenes - train - val) * per_scene)


# 512 px tiles per split of the official releases (ours: catalog and tiling). LandCover.ai: the
# official split files; LoveDA: 1024 px images, 4 tiles each, Train 2,522 and Val 1,669 images,
# evaluated on Val (its Test masks are hidden).
DATASET_TILES = {
    "landcoverai": Tiles(7470, 1602, 1602),
    "loveda": Tiles(2522 * 4, 1669 * 4, 1669 * 4),
    "deepglobe": deepglobe_tiles(),
}


@dataclass(frozen=True)
class Anchor:
    what: str
    case: gpu.Case  # the anchor's own model, counted like ours
    images_s: float


ANCHORS = {
    "resnet50": Anchor(
        "ResNet-50 at 224, AMP, one A100: 2,470 images/s",
        gpu.Case("anchor-resnet50", "classify", "resnet50", 224),
        2470.0,
    ),
    "vits14": Anchor(
        "ViT-Small (22M) at 224, bf16, tuned, one H100: 8,003 images/s",
        gpu.Case("anchor-vit-small", "classify", "vit_small_patch16_224", 224),
        8003.0,
    ),
}


@dataclass(frozen=True)
class Job:
    kind: str  # pretrain, finetune or evaluate
    name: str
    flops: float  # the whole job's
    images: int  # training images seen (pretrain, finetune) or test tiles (evaluate)
    rate: float  # FLOP/s
    after: str | None = None  # the pretraining a SOP cell waits for
    validation_flops: float = 0.0  # of ``flops``: the per-epoch validation passes

    @property
    def hours(self) -> float:
        return self.flops / self.rate / 3600.0


@functools.cache
def count(case: gpu.Case) -> tuple[float, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return gpu.count_flops(case, device, TILE_PX)


def rates(params: Params, measured: dict[str, Any] | None) -> dict[tuple[str, str], float]:
    """FLOP/s per (backbone, pretrain | finetune): measured where given, else the anchor's."""
    found: dict[tuple[str, str], float] = {}
    for row in (measured or {}).get("rows", []):
        if row["mode"] == "optimised" and row.get("model_images_s") and not row.get("error"):
            kind, _, backbone = row["case"].partition("-")  # pretrain-vits14: the paper's
            found[(backbone, kind)] = row["model_images_s"] * row["flops_per_image"]
    result = {}
    for backbone in params.pretrain.backbones:
        for kind in ("pretrain", "finetune"):
            if (backbone, kind) not in found:
                anchor = ANCHORS[backbone]
                found[(backbone, kind)] = anchor.images_s * count(anchor.case)[0]
            result[(backbone, kind)] = found[(backbone, kind)]
    return result


def grid_jobs(params: Params, measured: dict[str, Any] | None = None) -> list[Job]:
    """Every job of the paper grid: pretrain variants, fine-tune and evaluate cells."""
    rate = rates(params, measured)
    p, f = params.pretrain, params.finetune
    jobs: list[Job] = []
    pre = DATASET_TILES[p.dataset]
    for backbone in p.backbones:
        for subimage, jitter in p.variants():
            train, forward = count(gpu.Case("x", "pretrain", backbone, p.source_size, subimage))
            epochs = p.epochs_of(backbone)
            validation = epochs * pre.val * forward
            flops = epochs * pre.train * train + validation
            name = f"{backbone}-{pretext_variant(subimage, jitter)}"
            r = rate[(backbone, "pretrain")]
            jobs.append(Job("pretrain", name, flops, epochs * pre.train, r, None, validation))
    windows = math.ceil(TILE_PX / f.input_size) ** 2  # whole-tile validation and test
    backbones = {split_model(m)[0] for m in f.models}
    per_image = {b: count(gpu.Case("x", "finetune", b, f.input_size)) for b in backbones}
    for dataset in f.datasets:
        tiles = DATASET_TILES[dataset]
        for model in f.models:
            backbone, init = split_model(model)
            train, forward = per_image[backbone]
            after = (
                f"{backbone}-{sop_variant(init, p.main_variant)}"
                if init.startswith("sop")
                else None
            )
            r = rate[(backbone, "finetune")]
            for fraction in params.data.label_fractions:
                for seed in f.seeds:
                    cell = f"{dataset}-{model}-{fraction}-s{seed}"
                    images = f.epochs * math.ceil(fraction * tiles.train)
                    validation = f.epochs * tiles.val * windows * forward
                    flops = images * train + validation
                    jobs.append(Job("finetune", cell, flops, images, r, after, validation))
                    test = tiles.test * windows * forward
                    jobs.append(Job("evaluate", cell, test, tiles.test, r, f"finetune:{cell}"))
    return jobs


def wall_hours(jobs: Sequence[Job], gpus: int) -> float:
    """Pretraining first, a job per GPU, then each fine-tune with its evaluation, longest
    first on the GPU free soonest (as a Prefect work pool with one worker per GPU runs them)."""
    pretrain = [j.hours for j in jobs if j.kind == "pretrain"]
    evaluate = {j.after: j.hours for j in jobs if j.kind == "evaluate"}
    cells = sorted(
        (j.hours + evaluate[f"finetune:{j.name}"] for j in jobs if j.kind == "finetune"),
        reverse=True,
    )
    free = [0.0] * gpus
    for hours in sorted(pretrain, reverse=True):
        heapq.heapreplace(free, free[0] + hours)
    start = max(free)
    free = [start] * gpus
    for hours in cells:
        heapq.heapreplace(free, free[0] + hours)
    return max(free)


def render(jobs: Sequence[Job], source: str) -> str:
    lines = [
        f"Rates: {source}.",
        "",
        "| stage kind | jobs | images | GPU-hours | of which validation | per job (min - max) |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("pretrain", "finetune", "evaluate"):
        mine = [j for j in jobs if j.kind == kind]
        hours = [j.hours for j in mine]
        share = sum(j.validation_flops / j.rate for j in mine) / 3600 / sum(hours)
        lines.append(
            f"| {kind} | {len(mine)} | {sum(j.images for j in mine):,} | {sum(hours):,.1f} | "
            f"{f'{share:.0%}' if kind != 'evaluate' else '-'} | "
            f"{min(hours):.2f} - {max(hours):.2f} h |"
        )
    total = sum(j.hours for j in jobs)
    lines += [
        f"| all | {len(jobs)} | | {total:,.1f} | | |",
        "",
        f"Wall time: {wall_hours(jobs, 1):,.1f} h on one GPU; {wall_hours(jobs, 8):,.1f} h on "
        f"one 8-GPU machine; {wall_hours(jobs, 32):,.1f} h on four of them (pretraining first, "
        "one job per GPU, then the cells longest first).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--measured", type=Path, help="a GPU check's JSON (gpu_check.py --json)")
    args = parser.parse_args(argv)
    import pipeline.models  # noqa: F401  (torchvision beside a CPU torch, before timm)

    params = load_params(args.params)
    measured = json.loads(args.measured.read_text())["throughput"] if args.measured else None
    source = (
        f"measured by {args.measured} where it has the case, else the anchors"
        if measured
        else "the published anchors, " + "; ".join(a.what for a in ANCHORS.values())
    )
    print(render(grid_jobs(params, measured), source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
