"""GPU training throughput: images/s and MFU of SOP pretraining and fine-tuning, optimised vs eager.

Each case trains its model with the pipeline's own code (the models of ``pipeline.models``, the
losses of ``OverlapTask`` and ``SegmentationTask``) and the training step of
``pipeline/train/engine.py``: zero_grad, forward under autocast, ``loss.float()``, backward,
``clip_grad_norm_(1.0)``, AdamW step. Every case runs twice in one process, side by side:

* ``optimised``: bf16 autocast, channels_last, ``torch.compile`` (inductor, default mode) and
  fused AdamW, the engine's choices on CUDA;
* ``eager``: the same code in fp32 (no autocast), contiguous, no compile, non-fused AdamW.

Cases (``--cases``): ``pretrain-vits14`` (ViT-S/14, source 224, subimage 112),
``pretrain-resnet50`` (the ResNet-50 dual encoder, same sizes), ``finetune-vits14`` (ViT-S/14
segmenter at 448 px), ``finetune-resnet50`` (ResNet-50 U-Net at 512 px), both with LandCover.ai's
5 classes, and ``resnet50-classification`` (timm ``resnet50``, 224 px, 1000 classes,
cross-entropy: like for like with the published A100 figure).

Figures per case and mode: images/s end to end for pretraining (a synthetic tile store read by
``StoreTiles`` in a DataLoader with N workers and pinned memory, the SOP sampling on the device)
and "model only" (uint8 tiles or images already on the device, no loader: whether the loader
starves the GPU shows as the gap); model FLOPs per training image (``FlopCounterMode`` on one
forward and backward of the eager fp32 model); MFU against the GPU's *measured* bf16 matmul
rate; peak memory; the largest batch that fits (doubling until out of memory); compile seconds.
The targets are reported (``target met: yes/no``), never asserted.

    python benchmarks/gpu.py                                  # every case on CUDA (make bench-gpu)
    python benchmarks/gpu.py --cases pretrain-vits14 --steps 50 --json gpu.json
    python benchmarks/gpu.py --no-max-batch --workers 12      # skip the largest-batch search
    python benchmarks/gpu.py --smoke --out /tmp/results.md    # CPU, tiny models (a test)

Without a CUDA device (and without ``--device cpu`` or ``--smoke``) it prints one line saying the
GPU figures are pending and exits with code 2. Results go to ``benchmarks/results.md`` (the
``gpu`` section, between ``<!-- begin gpu -->`` and ``<!-- end gpu -->``); a smoke run writes
only to the ``--out`` it is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import inspect
import json
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import RESULTS, git_commit, machine, table, update_section

from pipeline.env import apply_env_defaults

CASE_NAMES = (
    "pretrain-vits14",
    "pretrain-resnet50",
    "finetune-vits14",
    "finetune-resnet50",
    "resnet50-classification",
)
SECTION = "gpu"
HEADING = "## GPU: training throughput (`benchmarks/gpu.py`)"
NUM_CLASSES = 5  # LandCover.ai
CLASSIFICATION_CLASSES = 1000
FLOP_BATCH = 2  # FlopCounterMode's batch (BatchNorm wants more than one sample)
MAX_BATCH_CAP = 8192
MAX_BATCH_SECONDS = 120.0  # per case and mode: a compiled model may recompile per batch size
GRAD_CLIP = 1.0  # the engine's default
MFU_TARGET = 0.30
MFU_TARGET_H100_IMAGES_S = 5000  # what 30 % MFU comes to on one H100 (the estimate)
PUBLISHED_RESNET50_A100 = 2470.0  # images/s: the published A100 mixed-precision figure at 224
RESNET50_TARGET_FACTOR = 1.3
PENDING_EXIT = 2


@dataclass(frozen=True)
class Case:
    """One workload: ``kind`` is pretrain (overlap model), finetune (segmenter) or classify."""

    name: str
    kind: str
    backbone: str  # a registry name (pipeline.models.backbones); classify: a timm model
    size: int  # the source size (pretrain) or the input size
    subimage: int = 0  # pretrain only
    batch: int = 256

    @property
    def label(self) -> str:
        sizes = f"{self.size}/{self.subimage}" if self.kind == "pretrain" else f"{self.size}"
        return f"{self.backbone} {sizes}"


@dataclass(frozen=True)
class Mode:
    name: str
    autocast: bool  # bf16
    channels_last: bool
    compile: bool
    fused: bool  # fused AdamW

    def describe(self) -> str:
        return ", ".join(
            [
                "bf16 autocast" if self.autocast else "fp32 (no autocast)",
                "channels_last" if self.channels_last else "contiguous",
                "torch.compile" if self.compile else "no compile",
                "fused AdamW" if self.fused else "AdamW not fused (foreach)",
            ]
        )


def full_cases() -> dict[str, Case]:
    return {
        case.name: case
        for case in (
            Case("pretrain-vits14", "pretrain", "vits14", 224, 112, batch=256),
            Case("pretrain-resnet50", "pretrain", "resnet50", 224, 112, batch=256),
            Case("finetune-vits14", "finetune", "vits14", 448, batch=32),
            Case("finetune-resnet50", "finetune", "resnet50", 512, batch=32),
            Case("resnet50-classification", "classify", "resnet50", 224, batch=256),
        )
    }


def smoke_cases() -> dict[str, Case]:
    """The same cases with the demo backbones at tiny sizes (multiples of the ViT's patch 14 and
    of the ResNet's strides), batch 2."""
    return {
        case.name: case
        for case in (
            Case("pretrain-vits14", "pretrain", "vit_tiny_demo", 56, 28, batch=2),
            Case("pretrain-resnet50", "pretrain", "resnet_demo", 64, 32, batch=2),
            Case("finetune-vits14", "finetune", "vit_tiny_demo", 56, batch=2),
            Case("finetune-resnet50", "finetune", "resnet_demo", 64, batch=2),
            Case("resnet50-classification", "classify", "resnet18", 64, batch=2),
        )
    }


@dataclass(frozen=True)
class Options:
    cases: tuple[str, ...] = CASE_NAMES
    batch: int | None = None  # overrides every case's own
    steps: int = 30
    warmup: int = 5
    workers: int = 8
    scenes: int = 8
    scene_height: int = 1600
    scene_width: int = 1700
    matmul_size: int = 8192
    device: str = "cuda"
    smoke: bool = False
    compile: bool = True
    max_batch: bool = True
    max_batch_cap: int = MAX_BATCH_CAP
    max_batch_seconds: float = MAX_BATCH_SECONDS
    work: Path | None = None
    command: str = "python benchmarks/gpu.py"


@dataclass
class Workload:
    """A model, its loss ``(forward model, batch, generator) -> loss`` and synthetic batches."""

    model: nn.Module
    loss: Callable[[nn.Module, Any, torch.Generator], Tensor]
    batch: Callable[[int], Any]  # batch size -> a batch on the device
    groups: list[dict[str, Any]]  # AdamW parameter groups (backbone, new layers)
    weight_decay: float


@dataclass
class Row:
    case: str
    mode: str
    model: str
    batch: int
    settings: str
    flops_per_image: float = 0.0  # forward + backward, counted on the eager fp32 model
    forward_flops_per_image: float = 0.0
    first_step_s: float | None = None  # includes compilation in the compiled mode
    compile_s: float | None = None
    model_images_s: float | None = None
    e2e_images_s: float | None = None
    images_s: float | None = None  # the headline: end to end where measured, else model only
    mfu_percent: float | None = None
    model_mfu_percent: float | None = None
    peak_memory_gib: float | None = None
    largest_batch: int | None = None
    largest_batch_stop: str | None = None  # oom, cap, time or error: why the search stopped
    speedup: float | None = None  # optimised / eager, headline images/s
    model_speedup: float | None = None
    seconds: float = 0.0  # the whole measurement, search included
    error: str | None = None


class EndlessRows(Sampler[int]):
    """Uniformly drawn rows, seeded, enough for any run."""

    def __init__(self, n: int, seed: int = 0, total: int = 10_000_000) -> None:
        self.n, self.seed, self.total = n, seed, total

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed)
        for _ in range(0, self.total, 65536):
            yield from rng.integers(0, self.n, 65536).tolist()

    def __len__(self) -> int:
        return self.total


def constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_tflops(device: torch.device, n: int, warmup: int = 3, iterations: int = 20) -> float:
    """The measured bf16 matmul rate (TFLOP/s) of an n x n x n product: 2 n^3 per product."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(warmup):
        out = a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iterations):
        out = a @ b
    synchronize(device)
    elapsed = time.perf_counter() - started
    del a, b, out
    release(device)
    return 2 * n**3 * iterations / elapsed / 1e12


def store_resizes() -> bool:
    """Whether ``StoreTiles`` resizes in the worker (its optional ``size`` argument)."""
    from pipeline.train.pretrain import StoreTiles

    return "size" in inspect.signature(StoreTiles).parameters


def build_workload(case: Case, device: torch.device, tile_px: int) -> Workload:
    """The case's model (random weights, on ``device``) with its task's loss; pretrain batches
    are uint8 (B, tile_px, tile_px, 3) tiles, as the loader delivers them."""
    import torch.nn.functional as F

    from pipeline.config import FinetuneParams, PretrainParams

    def uint8(*shape: int, high: int = 256) -> Tensor:
        return torch.randint(0, high, shape, dtype=torch.uint8, device=device)

    if case.kind == "pretrain":
        from pipeline.models.overlap import create_overlap_model
        from pipeline.train.pretrain import OverlapTask

        p = PretrainParams()
        model = create_overlap_model(
            case.backbone, case.size, case.subimage, share_encoders=p.share_encoders
        ).to(device)
        task = OverlapTask(
            model, case.size, case.subimage, gamma=p.focal_gamma, alpha=p.focal_alpha
        )
        backbone, head = task.param_groups()
        return Workload(
            model,
            task.training_loss,
            lambda b: uint8(b, tile_px, tile_px, 3),
            [
                {"params": backbone, "lr": p.lr_backbone},
                {"params": head, "lr": p.lr_head},
            ],
            p.weight_decay,
        )
    if case.kind == "finetune":
        from pipeline.data.catalog import LANDCOVERAI
        from pipeline.models.inits import Normalisation
        from pipeline.models.segmenters import create_segmenter
        from pipeline.train.finetune import SegmentationTask

        f = FinetuneParams()
        segmenter = create_segmenter(case.backbone, NUM_CLASSES, case.size).to(device)
        seg_task = SegmentationTask(
            segmenter,
            LANDCOVERAI.class_names,
            LANDCOVERAI.ignore_index,
            LANDCOVERAI.evaluated_classes,
            Normalisation.imagenet(),
            window=case.size,
        )
        backbone, head = seg_task.param_groups()
        size = case.size
        return Workload(
            segmenter,
            seg_task.training_loss,
            lambda b: (uint8(b, size, size, 3), uint8(b, size, size, high=NUM_CLASSES)),
            [
                {"params": backbone, "lr": f.lr_backbone},
                {"params": head, "lr": f.lr_head},
            ],
            f.weight_decay,
        )
    if case.kind == "classify":
        import timm

        classifier = timm.create_model(
            case.backbone,
            pretrained=False,
            num_classes=CLASSIFICATION_CLASSES,
        ).to(device)

        def classification_loss(
            model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator
        ) -> Tensor:
            images, labels = batch
            return F.cross_entropy(model(images).float(), labels)

        size = case.size
        return Workload(
            classifier,
            classification_loss,
            lambda b: (
                torch.randn(b, 3, size, size, device=device),
                torch.randint(0, CLASSIFICATION_CLASSES, (b,), device=device),
            ),
            [{"params": [p for p in classifier.parameters() if p.requires_grad], "lr": 1e-3}],
            0.05,
        )
    raise ValueError(f"unknown case kind {case.kind!r}")


def count_flops(case: Case, device: torch.device, tile_px: int) -> tuple[float, float]:
    """(training, forward) FLOPs per image of the eager fp32 model: FlopCounterMode over one
    forward + backward at batch ``FLOP_BATCH`` (matmuls, convolutions, attention kernels it
    knows; not the optimiser or elementwise work)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    workload = build_workload(case, device, tile_px)
    batch = workload.batch(FLOP_BATCH)
    generator = torch.Generator(device=device).manual_seed(0)
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        workload.loss(workload.model, batch, generator)
    with FlopCounterMode(display=False) as counter:
        loss = workload.loss(workload.model, batch, generator)
        loss.float().backward()  # type: ignore[no-untyped-call]
    training, forward = counter.get_total_flops(), forward_counter.get_total_flops()
    del workload, batch, loss
    release(device)
    return training / FLOP_BATCH, forward / FLOP_BATCH


def store_loader(
    store_dir: Path, batch: int, workers: int, device: torch.device, size: int
) -> DataLoader[Any]:
    """The pretrain stage's data path: StoreTiles over every tile of the store, in a DataLoader
    with ``workers`` workers and pinned memory, the engine's collate and prefetch."""
    from pipeline.data.store import TileStore
    from pipeline.train import seeds
    from pipeline.train.pretrain import StoreTiles

    store = TileStore(store_dir)
    rows = np.arange(len(store), dtype=np.int64)
    # ``size`` only where StoreTiles takes it (resizing in the worker, to the source size).
    dataset = StoreTiles(store, rows, size=size) if store_resizes() else StoreTiles(store, rows)
    extra: dict[str, Any] = {}
    try:
        from pipeline.data.loaders import collate

        extra["collate_fn"] = collate
    except ImportError:  # an older checkout: torch's default collate
        pass
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=EndlessRows(len(rows)),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        worker_init_fn=seeds.seed_worker,
        prefetch_factor=prefetch_batches() if workers else None,
        **extra,
    )


def prefetch_batches() -> int:
    from pipeline.train import engine

    return int(getattr(engine, "PREFETCH_BATCHES", 2))


def out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, or a library's allocation failure that means the same."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def largest_batch(
    step: Callable[[Any], object],
    make_batch: Callable[[int], Any],
    start: int,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    cap: int = MAX_BATCH_CAP,
    seconds: float = MAX_BATCH_SECONDS,
) -> tuple[int | None, str]:
    """(the largest batch that trained one step, why the search stopped): doubling from
    ``start`` until CUDA runs out of memory ("oom"), past ``cap`` ("cap") or past ``seconds``
    ("time": each new batch size may recompile a compiled model)."""
    fits: int | None = None
    size = start
    deadline = time.perf_counter() + seconds
    while size <= cap:
        if time.perf_counter() > deadline:
            return fits, "time"
        batch, failure = None, None
        try:
            batch = make_batch(size)
            step(batch)
            synchronize(device)
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            failure = "oom"
        del batch  # outside the except clause: its traceback no longer holds the tensors
        optimizer.zero_grad(set_to_none=True)
        release(device)
        if failure:
            print(f"    batch {size}: out of memory", flush=True)
            return fits, failure
        fits = size
        print(f"    batch {size}: fits", flush=True)
        size *= 2
    return fits, "cap"


def measure(
    case: Case,
    mode: Mode,
    options: Options,
    device: torch.device,
    tile_px: int,
    store_dir: Path | None,
    flops: tuple[float, float],
    matmul_rate: float,
) -> Row:
    """One case in one mode: model-only steps, then (pretrain) the same steps fed by the loader,
    then the largest-batch search."""
    batch_size = options.batch or case.batch
    row = Row(case.name, mode.name, case.label, batch_size, mode.describe())
    row.flops_per_image, row.forward_flops_per_image = flops
    torch.manual_seed(0)
    workload = build_workload(case, device, tile_px)
    model = workload.model
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward: Any = torch.compile(model) if mode.compile else model
    optimizer = torch.optim.AdamW(
        workload.groups, weight_decay=workload.weight_decay, fused=mode.fused
    )
    params = [p for group in workload.groups for p in group["params"]]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.autocast)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(batch: Any) -> Tensor:
        with autocast:
            loss = workload.loss(forward, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        return loss.detach()

    def timed(batches: Callable[[], Any], steps: int) -> float:
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step(batches())
        synchronize(device)
        return time.perf_counter() - started

    feed = constant(workload.batch(batch_size))  # the same batch every step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row.first_step_s = timed(feed, 1)  # compilation happens here
    timed(feed, max(options.warmup - 1, 0))
    if mode.compile:
        row.compile_s = row.first_step_s
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row.model_images_s = options.steps * batch_size / timed(feed, options.steps)
    if device.type == "cuda":
        row.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30

    if case.kind == "pretrain" and store_dir is not None:
        loader = store_loader(store_dir, batch_size, options.workers, device, case.size)
        iterator = iter(loader)

        def loaded() -> Any:
            return next(iterator).to(device, non_blocking=True)

        # Warm-up, then as many steps as the loader can have queued: timing starts with the
        # queue in its steady state (empty when the loader is the bottleneck).
        timed(loaded, max(options.warmup, 1) + options.workers * prefetch_batches())
        row.e2e_images_s = options.steps * batch_size / timed(loaded, options.steps)
        del iterator, loader

    row.images_s = row.e2e_images_s if row.e2e_images_s is not None else row.model_images_s
    row.mfu_percent = 100 * row.flops_per_image * row.images_s / (matmul_rate * 1e12)
    row.model_mfu_percent = 100 * row.flops_per_image * row.model_images_s / (matmul_rate * 1e12)
    del feed  # the search needs the memory
    release(device)
    if options.max_batch and device.type == "cuda":
        print(f"  {case.name} {mode.name}: largest batch (doubling from {batch_size})", flush=True)
        try:
            row.largest_batch, row.largest_batch_stop = largest_batch(
                step,
                workload.batch,
                batch_size,
                device,
                optimizer,
                options.max_batch_cap,
                options.max_batch_seconds,
            )
        except Exception as exc:  # not memory: keep the figures measured so far
            row.largest_batch_stop = f"error: {type(exc).__name__}"
            traceback.print_exc()
    return row  # the model, optimiser and batches go with this frame


def modes(options: Options) -> list[Mode]:
    """The engine's CUDA settings, and the same code in eager fp32."""
    optimised = Mode("optimised", True, True, options.compile and not options.smoke, True)
    eager = Mode("eager", False, False, False, False)
    return [optimised, eager]


def run(options: Options) -> dict[str, Any]:
    """Every requested case in both modes; returns the info, the rows and the target lines.

    A smoke run keeps to one CPU thread: a light check that can run beside other work.
    """
    threads = torch.get_num_threads()
    if options.smoke:
        torch.set_num_threads(1)
    try:
        return measure_all(options)
    finally:
        torch.set_num_threads(threads)


def measure_all(options: Options) -> dict[str, Any]:
    started = time.perf_counter()
    device = torch.device(options.device)
    work = options.work or Path(tempfile.mkdtemp(prefix="sop-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    apply_env_defaults(work)
    import pipeline.models  # noqa: F401  (torchvision beside a CPU torch, before timm)

    catalog = smoke_cases() if options.smoke else full_cases()
    unknown = sorted(set(options.cases) - set(catalog))
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(catalog)}")
    cases = [catalog[name] for name in options.cases]

    rate = matmul_tflops(device, options.matmul_size)
    print(f"bf16 matmul {options.matmul_size}^3: {rate:.1f} TFLOP/s measured", flush=True)

    store_dir: Path | None = None
    tiles, tile_size = 0, 0
    if any(case.kind == "pretrain" for case in cases):
        from pipeline.data.store import TileStore
        from pipeline.synthetic import painted_tile_store

        tick = time.perf_counter()
        store_dir = work / "tiles"
        if not (store_dir / "index.parquet").exists():  # a store painted by an earlier call
            painted_tile_store(  # no GeoTIFFs: the GPU machine has no rasterio
                store_dir,
                n_scenes=options.scenes,
                height=options.scene_height,
                width=options.scene_width,
            )
        store = TileStore(store_dir)
        tiles, tile_size = len(store), store.meta.tile_size
        print(
            f"synthetic store: {tiles} tiles of {tile_size} px in "
            f"{time.perf_counter() - tick:.0f} s",
            flush=True,
        )
    resizes = store_resizes()

    rows: list[Row] = []
    for case in cases:
        tile_px = case.size if resizes or store_dir is None else tile_size
        flops = count_flops(case, device, tile_px)
        print(
            f"{case.name} ({case.label}): {flops[0] / 1e9:.2f} GFLOP per training image "
            f"({flops[0] / max(flops[1], 1):.2f}x forward)",
            flush=True,
        )
        measured: dict[str, Row] = {}
        for mode in modes(options):
            tick = time.perf_counter()
            try:
                row = measure(case, mode, options, device, tile_px, store_dir, flops, rate)
            except Exception as exc:  # one failing case must not lose the others' figures
                traceback.print_exc()
                row = Row(case.name, mode.name, case.label, options.batch or case.batch, "")
                row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            if mode.compile:
                torch._dynamo.reset()
            release(device)
            measured[mode.name] = row
            rows.append(row)
            row.seconds = time.perf_counter() - tick
            print(f"  {mode.name:9s} {summary(row)} ({row.seconds:.1f} s)", flush=True)
        fast, slow = measured.get("optimised"), measured.get("eager")
        if fast and slow and fast.images_s and slow.images_s:
            fast.speedup = fast.images_s / slow.images_s
        if fast and slow and fast.model_images_s and slow.model_images_s:
            fast.model_speedup = fast.model_images_s / slow.model_images_s

    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "device_type": device.type,
        "modes": {mode.name: mode.describe() for mode in modes(options)},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": machine(),
        "commit": git_commit(),
        "command": options.command,
        "smoke": options.smoke,
        "matmul_size": options.matmul_size,
        "matmul_tflops": rate,
        "steps": options.steps,
        "warmup": options.warmup,
        "workers": options.workers,
        "prefetch": prefetch_batches(),
        "store_tiles": tiles,
        "tile_size": tile_size,
        "scenes": options.scenes,
        "scene_size": f"{options.scene_height}x{options.scene_width}",
        "resize_in_worker": resizes,
        "seconds": time.perf_counter() - started,
    }
    return {"info": info, "rows": [asdict(row) for row in rows], "targets": targets(rows, options)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU (no GPU)"


def summary(row: Row) -> str:
    if row.error:
        return f"ERROR {row.error}"
    e2e = f"{row.e2e_images_s:.1f}" if row.e2e_images_s is not None else "-"
    return (
        f"batch {row.batch}: {e2e} images/s end to end, {row.model_images_s or 0:.1f} model "
        f"only; MFU {row.mfu_percent or 0:.1f} %; first step {row.first_step_s or 0:.1f} s"
    )


def find(rows: Sequence[Row], case: str, mode: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.mode == mode and not r.error), None)


def targets(rows: Sequence[Row], options: Options) -> list[str]:
    """The issue's targets as "target met: yes/no" lines (reported, never asserted)."""
    lines: list[str] = []
    vit = find(rows, "pretrain-vits14", "optimised")
    if vit is None or vit.mfu_percent is None:
        lines.append("SOP pretraining ViT-S/14 224/112 at MFU >= 30 %: not measured in this run")
    else:
        met = vit.mfu_percent >= 100 * MFU_TARGET
        basis = "end to end, data loading included" if vit.e2e_images_s else "model only"
        lines.append(
            f"SOP pretraining ViT-S/14 ({vit.model}, {basis}, optimised): MFU "
            f"{vit.mfu_percent:.1f} % "
            f"of the measured bf16 matmul rate at {vit.images_s or 0:.0f} images/s; target "
            f">= {100 * MFU_TARGET:.0f} % (about {MFU_TARGET_H100_IMAGES_S:,} images/s on one "
            f"H100): target met: {'yes' if met else 'no'}"
        )
    goal = RESNET50_TARGET_FACTOR * PUBLISHED_RESNET50_A100
    plain = find(rows, "resnet50-classification", "optimised")
    if plain is None or plain.model_images_s is None:
        lines.append(f"ResNet-50 training >= {goal:,.0f} images/s: not measured in this run")
    else:
        met = plain.model_images_s >= goal
        lines.append(
            f"ResNet-50 training (timm {plain.model} px, 1000 classes, optimised, synthetic "
            f"data on the device): {plain.model_images_s:,.0f} images/s; target >= "
            f"{RESNET50_TARGET_FACTOR}x {PUBLISHED_RESNET50_A100:,.0f} (the published A100 "
            f"mixed-precision figure) = {goal:,.0f}: target met: {'yes' if met else 'no'}"
        )
    for name in ("pretrain-resnet50", "finetune-resnet50"):
        row = find(rows, name, "optimised")
        if row is not None and row.images_s is not None:
            lines.append(
                f"For reference, {name} (optimised): {row.images_s:,.0f} images/s "
                f"({row.images_s / goal:.2f}x the ResNet-50 target; a different workload)"
            )
    if options.smoke:
        lines = [
            f"{line} [smoke run: tiny models on CPU, not the target's workload]" for line in lines
        ]
    return lines


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render(results: dict[str, Any]) -> str:
    info = results["info"]
    m = info["machine"]
    rows = [Row(**row) for row in results["rows"]]
    display: list[dict[str, str]] = []
    for row in rows:
        if row.error:
            display.append(
                {"case": row.case, "mode": row.mode, "model": row.model, "batch": str(row.batch),
                 "e2e": f"error: {row.error}", "model_only": "–", "mfu": "–", "model_mfu": "–",
                 "gflop": fmt(row.flops_per_image / 1e9, 2), "peak": "–", "largest": "–",
                 "compile": "–", "speedup": "–"}
            )  # fmt: skip
            continue
        largest = "–" if row.largest_batch is None else str(row.largest_batch)
        if row.largest_batch_stop in ("cap", "time"):
            largest = f">= {largest} ({'cap' if row.largest_batch_stop == 'cap' else 'time limit'})"
        elif row.largest_batch_stop and row.largest_batch_stop.startswith("error"):
            largest = f"{largest} ({row.largest_batch_stop})"
        display.append(
            {
                "case": row.case,
                "mode": row.mode,
                "model": row.model,
                "batch": str(row.batch),
                "e2e": fmt(row.e2e_images_s),
                "model_only": fmt(row.model_images_s),
                "mfu": fmt(row.mfu_percent),
                "model_mfu": fmt(row.model_mfu_percent),
                "gflop": fmt(row.flops_per_image / 1e9, 2),
                "peak": fmt(row.peak_memory_gib, 2),
                "largest": largest,
                "compile": fmt(row.compile_s),
                "speedup": "–"
                if row.speedup is None
                else f"{row.speedup:.2f}x (model only {row.model_speedup or 0:.2f}x)",
            }
        )
    columns = [
        ("case", "case"),
        ("mode", "mode"),
        ("model", "model, sizes"),
        ("batch", "batch"),
        ("e2e", "images/s end to end"),
        ("model_only", "images/s model only"),
        ("mfu", "MFU %"),
        ("model_mfu", "MFU % model only"),
        ("gflop", "GFLOP/image (train)"),
        ("peak", "peak memory GiB"),
        ("largest", "largest batch"),
        ("compile", "compile s"),
        ("speedup", "optimised / eager"),
    ]
    resize = (
        "resized to the source size in the worker (`StoreTiles(..., size=source)`)"
        if info["resize_in_worker"]
        else f"whole {info['tile_size']} px tiles, resized on the device by the sampler"
    )
    smoke = info["smoke"]
    lines = [HEADING, ""]
    if smoke:
        lines += [
            "**Smoke run** (`--smoke`): CPU, tiny demo backbones at tiny sizes, a couple of steps; "
            "it checks the code path, the figures measure nothing.",
            "",
        ]
    gpu = (
        f"{info['device']} (CUDA {info['cuda']}, torch {info['torch']})"
        if info["device_type"] == "cuda"
        else f"no GPU, a CPU run (torch {info['torch']})"
    )
    modes = info["modes"]
    lines += [
        f"- Date: {info['date']}",
        f"- Machine: {gpu}; CPU {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; "
        f"Python {m['python']}, {m['os']}",
        f"- Git commit: {info['commit']}",
        f"- Command: `{info['command']}` ({info['seconds']:.0f} s in all)",
        f"- Measured bf16 matmul rate: **{info['matmul_tflops']:.1f} TFLOP/s** "
        f"({info['matmul_size']}x{info['matmul_size']}x{info['matmul_size']}, 2n^3 FLOPs per "
        "product, 20 timed after 3 warm-up); MFU is model FLOPs x images/s over this rate.",
        "",
        f"Modes, measured side by side in one run: `optimised`: {modes['optimised']}; "
        f"`eager`: the same code in {modes['eager']}. Both keep PyTorch's defaults, as the "
        "engine does (no TF32 for fp32 matmuls, TF32 for cuDNN convolutions, cudnn.benchmark "
        "off). channels_last applies to the model, as in the engine; compile, where on, is "
        "torch.compile's default (inductor). A step is the engine's: zero_grad, forward "
        "under autocast, `loss.float()`, backward, "
        f"clip_grad_norm_({GRAD_CLIP:g}), AdamW step. Warm-up: {info['warmup']} step(s), the "
        "first of which compiles (compile s is its time); then "
        f"{info['steps']} timed steps, synchronised; images/s = steps x batch / time.",
        "",
        "End to end (pretraining): a synthetic tile store "
        f"({info['store_tiles']} tiles of {info['tile_size']} px from {info['scenes']} scenes of "
        f"{info['scene_size']}) read by `StoreTiles`, {resize}, through a DataLoader with "
        f"{info['workers']} worker(s), pinned memory (on CUDA) and a prefetch of "
        f"{info['prefetch']} batches per worker; the SOP sampling "
        "(`OverlapTask.training_loss`) runs on the device. After the warm-up, as many steps "
        "as the loader can hold queued are run untimed, so that a starved GPU shows. Model "
        "only: uint8 tiles of the size the "
        "loader delivers (fine-tuning: uint8 images and masks; classification: float images "
        "and labels) already on the device, no loader. FLOPs per image: FlopCounterMode over "
        "one forward and backward of the eager fp32 model at batch "
        f"{FLOP_BATCH} (matmuls, convolutions, attention; the optimiser and elementwise work "
        "not counted). Peak memory: torch.cuda.max_memory_allocated over the timed model-only "
        "steps. Largest batch: doubling from the benchmark batch until CUDA runs out of "
        "memory, one step each with the mode's own settings (compiled: a new batch size may "
        "recompile), capped in size and time.",
        "",
        table(display, columns),
        "",
        "Targets (reported, not asserted):",
        "",
        *[f"- {line}" for line in results["targets"]],
        "",
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        metavar="CASE",
        help=f"a subset of {', '.join(CASE_NAMES)} (space or comma separated; default: all)",
    )
    parser.add_argument("--batch", type=int, help="one batch for every case (default: per case)")
    parser.add_argument("--steps", type=int, help="timed steps (default 30; smoke 2)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 5; smoke 1)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default 8; smoke 1)")
    parser.add_argument("--scenes", type=int, help="synthetic scenes (default 8; smoke 2)")
    parser.add_argument("--matmul-size", type=int, help="bf16 matmul n (default 8192; smoke 256)")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default cuda (smoke: cpu)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models: a code check")
    parser.add_argument("--no-compile", action="store_true", help="optimised without compile")
    parser.add_argument("--no-max-batch", action="store_true", help="skip the largest batch")
    parser.add_argument("--max-batch-cap", type=int, default=MAX_BATCH_CAP, help="search cap")
    parser.add_argument(
        "--max-batch-seconds",
        type=float,
        default=MAX_BATCH_SECONDS,
        help="time limit of one search (each batch size may recompile)",
    )
    parser.add_argument("--work", type=Path, help="where the synthetic store goes (a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    parser.add_argument(
        "--out", type=Path, help=f"results file (default {RESULTS}; smoke: only if given)"
    )
    args = parser.parse_args(argv)
    if args.cases:
        args.cases = [name for item in args.cases for name in item.split(",") if name]
        unknown = sorted(set(args.cases) - set(CASE_NAMES))
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {', '.join(CASE_NAMES)}")
    return args


def options_from(args: argparse.Namespace, argv: Sequence[str]) -> Options:
    smoke = bool(args.smoke)

    def pick(value: int | None, full: int, tiny: int) -> int:
        return value if value is not None else (tiny if smoke else full)

    return Options(
        cases=tuple(args.cases) if args.cases else CASE_NAMES,
        batch=args.batch,
        steps=pick(args.steps, 30, 2),
        warmup=pick(args.warmup, 5, 1),
        workers=pick(args.workers, 8, 1),
        scenes=pick(args.scenes, 8, 2),
        scene_height=1100 if smoke else 1600,
        scene_width=1200 if smoke else 1700,
        matmul_size=pick(args.matmul_size, 8192, 256),
        device=args.device or ("cpu" if smoke else "cuda"),
        smoke=smoke,
        compile=not args.no_compile,
        max_batch=not (args.no_max_batch or smoke),
        max_batch_cap=args.max_batch_cap,
        max_batch_seconds=args.max_batch_seconds,
        work=args.work,
        command=shlex.join(["python", "benchmarks/gpu.py", *argv]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    options = options_from(args, argv)
    if options.device == "cuda" and not torch.cuda.is_available():
        print(
            f"benchmarks/gpu.py: no CUDA device (torch {torch.__version__}), so the GPU figures "
            "are pending: run `make bench-gpu` on a GPU machine (--device cpu or --smoke for a "
            "CPU run)",
            file=sys.stderr,
        )
        return PENDING_EXIT
    results = run(options)
    text = render(results)
    print()
    print(text)
    out = args.out if (args.out or options.smoke) else RESULTS
    if out is not None:
        update_section(out, SECTION, text)
        print(f"wrote the {SECTION} section of {out}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 1 if any(row["error"] for row in results["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
