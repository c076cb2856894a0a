"""The GPU check: every CUDA path of the engine, the training throughput and a tiny grid cell,
in one run that fits 8 minutes on the GPU machine (`make gpu-check`; README, "GPU check").

That machine reaches no network. Its own ``python3`` (3.12) holds torch, torchvision, timm,
numpy, pandas, pyarrow, OpenCV, PyYAML, safetensors and tqdm, but not MLflow, Prefect, DVC,
rasterio, albumentations or pydantic. The last two and their needs travel as wheels
(`make gpu-wheels`, timm too, at the lock's version); the first four are not needed here. Items,
each printed with PASS, FAIL or SKIP and its figures:

1. The engine's CUDA paths, each for a few steps of ``pipeline.train.engine.fit``:
   bf16 autocast, channels_last, fused AdamW, torch.compile (inductor), the SOP sampler on the
   device, a run killed after a step and resumed from its checkpoint to the uninterrupted run's
   next-step loss, and DDP (NCCL) under ``torchrun --nproc_per_node=1``.
2. ``benchmarks/gpu.py``'s four training cases, short: images/s optimised vs eager, end to end
   through the tile-store loader and model-only, MFU against the measured bf16 matmul rate,
   peak memory.
3. A tiny grid cell through the training jobs (pretrain, starting weights, fine-tune, evaluate),
   its figures kept in a local JSON: the stage commands themselves need Prefect, MLflow and DVC,
   which do not fit the wheels' budget.

``--smoke`` runs the same items on the CPU with tiny models (``make test`` runs it, with the
packages the GPU machine lacks refused through ``SOP_ABSENT_PACKAGES``). Everything measured goes
to one JSON (``--json``) and to the ``gpu`` section of ``benchmarks/results.md``.

    python3 benchmarks/gpu_check.py                       # on the GPU machine (make gpu-check)
    python3 benchmarks/gpu_check.py --smoke --out /tmp/results.md --json /tmp/check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.abc
import importlib.machinery
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
ABSENT_ENV = "SOP_ABSENT_PACKAGES"


class _Absent(importlib.abc.MetaPathFinder):
    """Refuses the packages the GPU machine lacks, as there: what the check imports must do
    without them (the smoke test sets ``SOP_ABSENT_PACKAGES``; the workers inherit it)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)")
        return None


if os.environ.get(ABSENT_ENV):
    sys.meta_path.insert(0, _Absent(frozenset(os.environ[ABSENT_ENV].split(","))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BUDGET_S = 480.0  # the 8 minutes, leaving time to run the check again after a fix
SECTION = "gpu"
KILLED = (-9, 137)  # SIGKILL, directly or as a shell relays it
THROUGHPUT_CASES = ("pretrain-vits14", "pretrain-resnet50", "finetune-vits14", "finetune-resnet50")


@dataclass(frozen=True)
class Scale:
    """The sizes of one run: the GPU's, or the CPU smoke's."""

    device: str
    compile_backend: str
    engine_backbone: str  # the engine checks' overlap model, at source/subimage
    source: int
    subimage: int
    tiles: int  # the engine checks train on these tiles, one step per epoch
    epochs: int
    kill_step: int  # the resume check kills its run after this step
    scenes: int  # the painted tile store's scenes (1100x1200 each)
    throughput_steps: int
    throughput_warmup: int
    loader_workers: int


GPU_SCALE = Scale("cuda", "inductor", "resnet_demo", 112, 56, 8, 6, 4, 4, 20, 5, 8)
SMOKE_SCALE = Scale("cpu", "aot_eager", "resnet_demo", 64, 32, 4, 5, 3, 4, 2, 1, 0)


@dataclass
class Item:
    name: str
    status: str = "skip"  # pass, fail or skip
    detail: str = ""
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status.upper():4s}  {self.name}: {self.detail} ({self.seconds:.1f} s)"


# --- the engine, in a worker process -----------------------------------------------------------


@dataclass(frozen=True)
class FitSpec:
    """One ``fit`` of the engine checks' model, run by ``--fit-worker`` in its own process (a
    failpoint may kill it; torchrun may start it)."""

    store: str
    out: str
    checkpoint_dir: str
    backbone: str
    source: int
    subimage: int
    tiles: int
    epochs: int
    device: str
    compile: bool = False
    compile_backend: str = "inductor"


def fit_worker(spec: FitSpec) -> dict[str, Any]:
    """Train on ``spec.tiles`` tiles in one batch (a step per epoch); report what the CUDA paths
    did: activation dtype, memory format, the optimiser's fusing, the process group's backend."""
    import torch.distributed as dist
    from torch import nn

    from pipeline.data.store import TileStore
    from pipeline.models.overlap import create_overlap_model
    from pipeline.train.engine import EngineSettings, fit, latest_checkpoint
    from pipeline.train.pretrain import OverlapTask, StoreTiles

    store = TileStore(Path(spec.store))
    tiles = StoreTiles(store, np.arange(spec.tiles), size=spec.source)
    torch.manual_seed(0)
    model = create_overlap_model(spec.backbone, spec.source, spec.subimage)
    dtypes: set[str] = set()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    first.register_forward_hook(
        lambda module, args, out: dtypes.add(str(out.dtype)) if module.training else None
    )
    settings = EngineSettings(
        epochs=spec.epochs,
        batch_size=spec.tiles,
        lr_backbone=1e-3,
        lr_head=1e-3,
        weight_decay=0.0,
        warmup_epochs=1,
        seed=0,
        checkpoint_dir=Path(spec.checkpoint_dir),
        checkpoint_every=10**6,  # epoch ends only: the newest checkpoint is the last step's
        compile=spec.compile,
        compile_backend=spec.compile_backend,
        progress=False,
        device=spec.device,
    )
    result = fit(OverlapTask(model, spec.source, spec.subimage), tiles, tiles, settings)
    checkpoint = latest_checkpoint(Path(spec.checkpoint_dir))
    weight = next(p for p in model.parameters() if p.dim() == 4)
    report = {
        "history": result.history,
        "resumed_from": result.resumed_from,
        "activation_dtypes": sorted(dtypes),
        "channels_last": weight.is_contiguous(memory_format=torch.channels_last),
        "fused": None
        if checkpoint is None
        else checkpoint["optimizer"]["param_groups"][0].get("fused"),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "device": str(next(model.parameters()).device),
    }
    Path(spec.out).write_text(json.dumps(report))
    return report


def run_worker(spec: FitSpec, *, failpoint: str | None = None, torchrun: bool = False) -> int:
    """``spec`` in a new process; its exit code (a failpoint's kill included)."""
    spec_file = Path(spec.out).with_suffix(".spec.json")
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    script = [str(Path(__file__).resolve()), "--fit-worker", str(spec_file)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command = [sys.executable, *(launcher if torchrun else []), *script]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("SOP_FAILPOINTS", None)
    if failpoint:
        env["SOP_FAILPOINTS"] = failpoint
    return subprocess.run(command, env=env, timeout=600, check=False).returncode


# --- the checks ----------------------------------------------------------------------------


def close(a: float, b: float, rtol: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(abs(b), 1e-12)


def losses(report: dict[str, Any]) -> list[float]:
    return [float(row["train_loss"]) for row in report["history"]]


class Check:
    """The items of one run, against a time budget: an item that would not fit is skipped."""

    def __init__(self, scale: Scale, work: Path, budget_s: float) -> None:
        self.scale, self.work, self.budget_s = scale, work, budget_s
        self.started = time.perf_counter()
        self.items: list[Item] = []
        self.figures: dict[str, Any] = {}
        self.store = work / "tiles"

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def item(self, name: str, needs_s: float, body: Callable[[Item], None]) -> Item:
        item = Item(name)
        self.items.append(item)
        if self.left() < needs_s:
            item.detail = (
                f"skipped: {self.left():.0f} s of the budget left, it needs about {needs_s:.0f}"
            )
            print(item.line(), flush=True)
            return item
        tick = time.perf_counter()
        try:
            body(item)
        except Exception as exc:  # one failing item must not lose the others
            traceback.print_exc()
            item.status, item.detail = "fail", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        item.seconds = time.perf_counter() - tick
        print(item.line(), flush=True)
        return item

    def spec(self, name: str, **changes: Any) -> FitSpec:
        s = self.scale
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        base = FitSpec(
            store=str(self.store),
            out=str(folder / "report.json"),
            checkpoint_dir=str(folder / "checkpoints"),
            backbone=s.engine_backbone,
            source=s.source,
            subimage=s.subimage,
            tiles=s.tiles,
            epochs=s.epochs,
            device=s.device,
            compile_backend=s.compile_backend,
        )
        return dataclasses.replace(base, **changes)

    def fit(self, spec: FitSpec, **how: Any) -> dict[str, Any]:
        code = run_worker(spec, **how)
        if code != 0:
            raise RuntimeError(f"the worker exited with {code}")
        report: dict[str, Any] = json.loads(Path(spec.out).read_text())
        return report


def engine_items(check: Check) -> None:
    """The engine on the device: its CUDA choices, compile, resume and DDP, a few steps each."""
    s = check.scale
    cuda = s.device == "cuda"
    reports: dict[str, dict[str, Any]] = {}
    # bf16 loss and cuDNN's backward differ in the last bits between runs; the CPU is exact.
    rtol = 2e-2 if cuda else 1e-6

    def eager(item: Item) -> None:
        reports["eager"] = report = check.fit(check.spec("eager"))
        curve = losses(report)
        ok = all(math.isfinite(v) for v in curve) and curve[-1] < curve[0]
        item.status = "pass" if ok else "fail"
        item.detail = (
            f"{len(curve)} steps on {report['device']}, loss {curve[0]:.4f} -> {curve[-1]:.4f}"
        )
        item.figures = {"train_loss": curve}

    def expect(name: str, key: str, on_cuda: Any, on_cpu: Any) -> None:
        def body(item: Item) -> None:
            report = reports["eager"]
            seen, wanted = report[key], on_cuda if cuda else on_cpu
            item.status = "pass" if seen == wanted else "fail"
            item.detail = f"{key} {seen!r} (expected {wanted!r} on {s.device})"
            item.figures = {key: seen}

        check.item(name, 0.0, body) if "eager" in reports else None

    check.item("engine: training steps on the device", 60, eager)
    expect("bf16 autocast", "activation_dtypes", ["torch.bfloat16"], ["torch.float32"])
    expect("channels_last", "channels_last", True, False)
    expect("fused AdamW", "fused", True, False)

    def compiled(item: Item) -> None:
        report = check.fit(check.spec("compiled", compile=True, epochs=2))
        ours, reference = losses(report), losses(reports["eager"])[:2]
        # Compiled kernels round differently: the loss agrees within 2 % on either device.
        ok = all(close(a, b, 2e-2) for a, b in zip(ours, reference, strict=True))
        item.status = "pass" if ok else "fail"
        item.detail = f"{s.compile_backend}: loss {ours} vs eager {reference}"
        item.figures = {"train_loss": ours, "eager": reference}

    def resumed(item: Item) -> None:
        spec = check.spec("resume")
        code = run_worker(spec, failpoint=f"train.step@{s.kill_step}")
        if code not in KILLED:
            raise RuntimeError(f"the run to kill exited with {code}, not SIGKILL")
        report = check.fit(spec)
        step = s.kill_step - 1  # the epoch-end checkpoint before the killed step
        nxt, ref = losses(report)[step], losses(reports["eager"])[step]
        ok = report["resumed_from"] == step and close(nxt, ref, rtol)
        item.status = "pass" if ok else "fail"
        item.detail = (
            f"killed after step {s.kill_step}, resumed from step {report['resumed_from']}: "
            f"next-step loss {nxt:.6f} vs uninterrupted {ref:.6f} "
            f"(relative difference {abs(nxt - ref) / max(abs(ref), 1e-12):.1e})"
        )
        item.figures = {"resumed_from": report["resumed_from"], "loss": nxt, "uninterrupted": ref}

    def ddp(item: Item) -> None:
        report = check.fit(check.spec("ddp", epochs=2), torchrun=True)
        backend = "nccl" if cuda else "gloo"
        ours, reference = losses(report), losses(reports["eager"])[:2]
        ok = (
            report["backend"] == backend
            and report["world_size"] == 1
            and all(close(a, b, rtol) for a, b in zip(ours, reference, strict=True))
        )
        item.status = "pass" if ok else "fail"
        item.detail = (
            f"torchrun --nproc_per_node=1: backend {report['backend']}, world "
            f"{report['world_size']}, loss {ours} vs one process {reference}"
        )
        item.figures = {"backend": report["backend"], "train_loss": ours}

    if "eager" in reports:
        check.item(f"torch.compile ({s.compile_backend})", 120, compiled)
        check.item("checkpoint saved and resumed on the device", 60, resumed)
        check.item(f"DDP ({'NCCL' if cuda else 'gloo'}) under torchrun", 60, ddp)


def sampler_item(check: Check) -> None:
    """The SOP sampler on the device: each subimage is its source under the box, and the
    target is exactly that rectangle."""
    from pipeline.train.sop import sample_overlap

    def body(item: Item) -> None:
        s, device = check.scale, torch.device(check.scale.device)
        generator = torch.Generator(device=device).manual_seed(0)
        tiles = torch.randint(0, 256, (16, s.source, s.source, 3), dtype=torch.uint8, device=device)
        pairs = sample_overlap(tiles, s.source, s.subimage, generator)
        bad = 0
        for i, (top, left) in enumerate(pairs.boxes.tolist()):
            box = (slice(top, top + s.subimage), slice(left, left + s.subimage))
            crop = pairs.source[i, :, box[0], box[1]]
            target = torch.zeros_like(pairs.target[i, 0])
            target[box] = 1
            bad += not (
                torch.equal(crop, pairs.subimage[i]) and torch.equal(target, pairs.target[i, 0])
            )
        on = {str(t.device) for t in (pairs.source, pairs.subimage, pairs.target, pairs.boxes)}
        item.status = "pass" if bad == 0 and on == {str(tiles.device)} else "fail"
        item.detail = f"16 pairs on {sorted(on)}: {16 - bad} crops and targets exact"

    check.item("SOP sampler on the device", 10, body)


def throughput_items(check: Check) -> list[dict[str, Any]]:
    """benchmarks/gpu.py's four training cases, one call each (the painted store is shared)."""
    import gpu

    s, results = check.scale, []
    smoke = s.device == "cpu"
    options = gpu.Options(
        steps=s.throughput_steps,
        warmup=s.throughput_warmup,
        workers=min(s.loader_workers, os.cpu_count() or 1) if not smoke else 1,
        scenes=s.scenes,
        scene_height=1100,
        scene_width=1200,
        matmul_size=256 if smoke else 8192,
        device=s.device,
        smoke=smoke,
        max_batch=False,
        work=check.work / "throughput",
        command="python3 benchmarks/gpu_check.py" + (" --smoke" if smoke else ""),
    )
    for case in THROUGHPUT_CASES:

        def body(item: Item, case: str = case) -> None:
            result = gpu.run(dataclasses.replace(options, cases=(case,)))
            results.append(result)
            rows = result["rows"]
            errors = [row["error"] for row in rows if row["error"]]
            item.status = "fail" if errors or not rows else "pass"
            item.detail = "; ".join(errors) or "; ".join(
                f"{row['mode']} {gpu.fmt(row['images_s'], 0)} img/s, MFU "
                f"{gpu.fmt(row['mfu_percent'])} %, {gpu.fmt(row['peak_memory_gib'], 2)} GiB"
                for row in rows
            )
            item.figures = {"rows": rows}

        check.item(f"throughput {case}", 15 if smoke else 75, body)
    return results


def grid_hours_item(check: Check, throughput: dict[str, Any] | None) -> str | None:
    """The paper grid's GPU-hours per stage kind at the rates just measured (grid_hours.py)."""
    import grid_hours

    from pipeline.config import load_params

    table: list[str] = []

    def body(item: Item) -> None:
        if throughput is None:
            raise RuntimeError("no throughput was measured")
        jobs = grid_hours.grid_jobs(load_params(ROOT / "params.yaml"), throughput)
        source = "this run's optimised model-only throughput" + (
            " (smoke: tiny models on the CPU, so the hours mean nothing)"
            if check.scale.device == "cpu"
            else ""
        )
        table.append(grid_hours.render(jobs, source))
        total = sum(job.hours for job in jobs)
        item.status = "pass" if math.isfinite(total) and total > 0 else "fail"
        item.detail = (
            f"{total:,.1f} GPU-hours; wall {grid_hours.wall_hours(jobs, 1):,.1f} h on one GPU, "
            f"{grid_hours.wall_hours(jobs, 8):,.1f} h on eight, "
            f"{grid_hours.wall_hours(jobs, 32):,.1f} h on four machines of eight"
        )
        item.figures = {"jobs": [dataclasses.asdict(job) for job in jobs]}

    check.item("paper grid GPU-hours at the measured rates", 60, body)
    return table[0] if table else None


def cell_item(check: Check) -> None:
    """One grid cell through the training jobs the stages run (pretrain, starting weights,
    fine-tune, evaluate), on the device; the stages' Prefect, MLflow and DVC are not here."""
    from pipeline import layout
    from pipeline.config import params_from_mapping
    from pipeline.data.store import TileStore
    from pipeline.models.backbones import create_backbone
    from pipeline.models.inits import init_state, load_init
    from pipeline.models.weights import save_encoder
    from pipeline.train.finetune import FinetuneJob, evaluate_weights
    from pipeline.train.pretrain import PretrainJob

    s, work = check.scale, check.work / "cell"

    def body(item: Item) -> None:
        params = params_from_mapping(
            {
                "data": {"datasets": ["landcoverai"]},
                "pretrain": {"backbones": ["resnet_demo"], "init": "none", "source_size": s.source,
                             "subimage_sizes": [s.subimage], "color_jitters": [0.0], "epochs": 2,
                             "batch_size": 4, "warmup_epochs": 1},
                "finetune": {"models": ["resnet_demo-sop"], "input_size": 128, "epochs": 2,
                             "batch_size": 4, "warmup_epochs": 1},
                "compute": {"device": s.device, "devices": 1, "loader_workers": 0,
                            "progress": False},
            }
        )  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        pretrained = PretrainJob(
            params, "resnet_demo", check.store, work / "pretrain", work / "pretrain-ck"
        ).run()
        state, source = init_state(
            "sop",
            "resnet_demo",
            weights_file=None,
            sop_encoder=work / "pretrain" / layout.ENCODER_FILE,
            cache_dir=work / "weights-cache",
            progress=False,
        )
        assert state is not None
        encoder = create_backbone("resnet_demo", 128)
        loaded = load_init(encoder, "resnet_demo", state, source)
        save_encoder(encoder, work / "init.safetensors")
        tuned = FinetuneJob(
            params, "resnet_demo", "sop", 1.0, 0, work / "init.safetensors",
            check.store, work / "finetune", work / "finetune-ck",
        ).run()  # fmt: skip
        store = TileStore(check.store)
        evaluation = evaluate_weights(
            store, store.rows("test"), "resnet_demo", "sop",
            work / "finetune" / layout.BEST_WEIGHTS_FILE, params.finetune, torch.device(s.device),
        )  # fmt: skip
        record = {
            "pretrain": {k: pretrained[k] for k in ("steps", "history", "device")},
            "weights": {"source": source, "loaded_tensors": loaded.loaded},
            "finetune": {k: tuned[k] for k in ("steps", "history", "best_epoch", "device")},
            "evaluate": evaluation.figures,
        }
        (work / "cell.json").write_text(json.dumps(record, indent=2))  # the local tracking
        miou = evaluation.figures["test_miou"]
        item.status = "pass" if 0.0 <= miou <= 1.0 else "fail"
        item.detail = (
            f"pretrain {pretrained['steps']} steps (val IoU "
            f"{pretrained['history'][-1]['val_iou']:.3f}), weights ({loaded.loaded} tensors), "
            f"fine-tune {tuned['steps']} steps, test mIoU {miou:.3f} on "
            f"{len(store.rows('test'))} tiles; record in {work / 'cell.json'}"
        )
        item.figures = record

    check.item("grid cell through the jobs (pretrain, weights, fine-tune, evaluate)", 90, body)


# --- the run -------------------------------------------------------------------------------


def render(
    info: dict[str, Any],
    items: list[Item],
    throughput: dict[str, Any] | None,
    grid_hours: str | None,
) -> str:
    import gpu

    lines = [
        "## GPU check (`benchmarks/gpu_check.py`, `make gpu-check`)",
        "",
        f"- Date: {info['date']}; device: {info['device']}; torch {info['torch']} (CUDA "
        f"{info['cuda']}), Python {info['python']}; commit {info['commit']}",
        f"- Command: `{info['command']}`; {info['seconds']:.0f} s of a {info['budget_s']:.0f} s "
        f"budget; {info['passed']} passed, {info['failed']} failed, {info['skipped']} skipped",
        "",
        "| item | status | detail | s |",
        "|---|---|---|---|",
    ]
    for item in items:
        detail = item.detail.replace("|", "/")
        lines.append(f"| {item.name} | {item.status.upper()} | {detail} | {item.seconds:.1f} |")
    text = "\n".join(lines) + "\n"
    if grid_hours is not None:
        text += "\n### The paper grid at these rates (`benchmarks/grid_hours.py`)\n\n" + grid_hours
    if throughput is not None:
        text += "\n" + gpu.render(throughput)
    return text


def merged_throughput(results: list[dict[str, Any]], smoke: bool) -> dict[str, Any] | None:
    """The per-case calls as one result for ``gpu.render``."""
    import gpu

    if not results:
        return None
    rows = [row for result in results for row in result["rows"]]
    info = {**results[0]["info"], "seconds": sum(r["info"]["seconds"] for r in results)}
    targets = gpu.targets([gpu.Row(**row) for row in rows], gpu.Options(smoke=smoke))
    return {"info": info, "rows": rows, "targets": targets}


def run_check(scale: Scale, work: Path, budget_s: float, command: str) -> dict[str, Any]:
    from pipeline.env import apply_env_defaults
    from pipeline.synthetic import painted_tile_store

    apply_env_defaults(work)
    import pipeline.models  # noqa: F401  (torchvision beside a CPU torch, before timm)

    check = Check(scale, work, budget_s)

    def store(item: Item) -> None:
        painted_tile_store(check.store, n_scenes=scale.scenes)
        item.status, item.detail = "pass", f"{scale.scenes} scenes painted into {check.store}"

    check.item("painted tile store", 30, store)
    engine_items(check)
    sampler_item(check)
    throughput = merged_throughput(throughput_items(check), smoke=scale.device == "cpu")
    cell_item(check)
    hours = grid_hours_item(check, throughput)
    from run import git_commit

    counts = {s: sum(i.status == s for i in check.items) for s in ("pass", "fail", "skip")}
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name() if scale.device == "cuda" else "CPU (smoke)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "commit": git_commit(),
        "command": command,
        "budget_s": budget_s,
        "seconds": time.perf_counter() - check.started,
        "passed": counts["pass"],
        "failed": counts["fail"],
        "skipped": counts["skip"],
    }
    return {
        "info": info,
        "items": [dataclasses.asdict(item) for item in check.items],
        "throughput": throughput,
        "grid_hours": hours,
    }


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models: a code check")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="skip what would not fit")
    parser.add_argument("--work", type=Path, help="where stores and checkpoints go (a temp dir)")
    parser.add_argument("--json", type=Path, help="every figure as JSON")
    parser.add_argument(
        "--out",
        type=Path,
        help="results file (default benchmarks/results.md; smoke: only if given)",
    )
    parser.add_argument("--fit-worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.fit_worker:
        fit_worker(FitSpec(**json.loads(args.fit_worker.read_text())))
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print(
            f"benchmarks/gpu_check.py: no CUDA device (torch {torch.__version__}): the GPU "
            "figures are pending; run `make gpu-check` on the GPU machine (--smoke: on the CPU)",
            file=sys.stderr,
        )
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="sop-gpu-check-"))
    command = " ".join(["python3 benchmarks/gpu_check.py", *argv])
    results = run_check(SMOKE_SCALE if args.smoke else GPU_SCALE, work, args.budget_s, command)
    items = [Item(**i) for i in results["items"]]
    text = render(results["info"], items, results["throughput"], results["grid_hours"])
    print("\n" + text)
    from run import RESULTS, update_section

    out = args.out if (args.out or args.smoke) else RESULTS
    if out is not None:
        update_section(out, SECTION, text)
        print(f"wrote the {SECTION} section of {out}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 1 if results["info"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
