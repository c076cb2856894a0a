"""Pretraining throughput and learning curve on synthetic tiles (the GPU check of issue 4).

Trains an overlap model from random weights on a synthetic LandCover.ai-style tile store, with
the pipeline's own job runner (the code the pretrain stage runs), and prints per epoch: the
pretext IoU, the box-decoded IoU and the centred-box baseline; at the end images/s and peak
memory. Defaults are the full-size check: ViT-S/14 at 224/112 on CUDA; the 60 epochs are a
guess at ten minutes on an H100 (not yet measured): adjust --epochs to the budget.

    python benchmarks/pretrain_throughput.py                       # GPU, ViT-S/14, 224/112
    python benchmarks/pretrain_throughput.py --backbone resnet50
    python benchmarks/pretrain_throughput.py --backbone vit_tiny_demo --device cpu \\
        --source 112 --subimage 56 --epochs 2 --batch-size 8 --scenes 2   # a CPU smoke run

``--out results.json`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline.env import apply_env_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vits14")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--source", type=int, default=224)
    parser.add_argument("--subimage", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="both groups (random init)")
    parser.add_argument("--scenes", type=int, default=24, help="synthetic 1600x1700 scenes")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sop-bench-"))
    apply_env_defaults(work)
    from pipeline.config import params_from_mapping
    from pipeline.data.store import TileStore
    from pipeline.synthetic import synthetic_tile_store
    from pipeline.train.pretrain import PretrainJob, run_pretrain

    started = time.perf_counter()
    store = synthetic_tile_store(
        work / "data", n_scenes=args.scenes, height=1600, width=1700, split_fractions=(0.8, 0.2, 0)
    )
    tiles = len(TileStore(store))
    print(f"{tiles} synthetic tiles in {time.perf_counter() - started:.0f} s")
    params = {
        "seed": 0,
        "data": {"datasets": ["landcoverai"]},
        "pretrain": {
            "backbones": [args.backbone],
            "init": "none",
            "source_size": args.source,
            "subimage_sizes": [args.subimage],
            "color_jitters": [0.0],
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr_backbone": args.lr,
            "lr_head": args.lr,
            "warmup_epochs": 2,
        },
        # No SOP model of another backbone to fine-tune: the params file stays consistent.
        "finetune": {"models": [f"{args.backbone}-random"]},
        "compute": {
            "device": args.device,
            "devices": 1,
            "compile": args.compile,
            "checkpoint_every": 10**6,
            "loader_workers": args.workers,
        },
    }
    resolved = params_from_mapping(params, source="benchmark")
    result = run_pretrain(
        PretrainJob(resolved, args.backbone, store, work / "out", work / "checkpoints")
    )
    print("epoch  train_loss  val_iou  val_box_iou  baseline_iou")
    for row in result["history"]:
        print(
            f"{int(row['epoch']):5d}  {row['train_loss']:10.4f}  {row['val_iou']:7.3f}  "
            f"{row['val_box_iou']:11.3f}  {row['baseline_iou']:12.3f}"
        )
    figures = {k: v for k, v in result.items() if k != "history"}
    figures["tiles"] = tiles
    figures["curve"] = result["history"]
    print(json.dumps({k: v for k, v in figures.items() if k != "curve"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
