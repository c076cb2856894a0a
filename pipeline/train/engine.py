"""One training engine for pretraining and fine-tuning; a task supplies model, loss and metrics.

What lives here once: AdamW with parameter groups (backbone and new layers), linear warm-up then
cosine, gradient clipping, bf16 autocast on CUDA (fp32 on CPU), channels_last, optional
torch.compile, DDP under torchrun (gloo on CPU), atomic checkpoints every N steps (model,
optimiser, scheduler, step, RNG) with resume from the newest one that loads, a progress bar, and
per-epoch metrics to a callback, and the best-validation weights (``best.pt``) when the task
names a metric to select on.

Determinism: the data order of each epoch is a permutation drawn from (seed, epoch), and the
task's randomness at step t comes from a generator seeded with (seed, t, rank). A run resumed at
any checkpoint therefore sees exactly the batches and samples an uninterrupted run sees, and ends
with the same metrics on CPU. A training set that augments in its DataLoader workers gets the
epoch through ``set_epoch`` before each epoch's loader is built, and seeds each sample from
(seed, epoch, index): the same augmentation whichever worker or rank draws it.

Validation is exact under DDP: each rank evaluates a disjoint share of the validation set, the
task returns additive sums (IoU sums, a confusion matrix), the engine all-reduces them, and the
task turns the totals into metrics, so the figures equal a single process's.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from pipeline.data.loaders import Collate, collate
from pipeline.errors import CorruptCheckpointError
from pipeline.faults import failpoint
from pipeline.files import atomic_write, write_text
from pipeline.train import distributed
from pipeline.train.distributed import Distributed
from pipeline.train.seeds import epoch_rng, seed_worker, step_generator, stream_seed

CHECKPOINT_GLOB = "step-*.pt"
BEST_FILE = "best.pt"
DIGEST_SUFFIX = ".sha256"  # beside each checkpoint: the sha256 of its bytes
PREFETCH_BATCHES = 4  # per worker: rides out a slow batch without starving the step
READOUT_EVERY = 20  # steps between progress readouts, the only host syncs while training


class Task(Protocol):
    """What the engine needs from pretraining or fine-tuning."""

    model: nn.Module
    shown: tuple[str, ...]  # the validation metrics the progress bar shows

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters)."""
        ...

    def training_loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        """The mean loss of one (per-rank) batch; ``generator`` is the step's randomness."""
        ...

    def validation_sums(
        self, model: nn.Module, loader: DataLoader[Any], device: torch.device
    ) -> dict[str, Tensor]:
        """Additive validation state over ``loader``'s ``(indices, items)`` batches.

        ``indices`` are positions in the whole validation set, so per-sample randomness can be
        tied to the sample, not to the rank that sees it.
        """
        ...

    def summarise(self, sums: Mapping[str, Tensor]) -> dict[str, float]:
        """Metrics from the validation sums over the whole set."""
        ...


@dataclass(frozen=True)
class EngineSettings:
    epochs: int
    batch_size: int  # global: split evenly over the DDP ranks
    lr_backbone: float
    lr_head: float
    weight_decay: float
    warmup_epochs: int
    seed: int
    checkpoint_dir: Path
    checkpoint_every: int = 50  # steps
    keep_checkpoints: int = 2
    grad_clip: float = 1.0
    compile: bool = False
    compile_backend: str = "inductor"
    channels_last: bool = True
    num_workers: int = 0
    eval_batch_size: int | None = None  # per rank; the training batch per rank by default
    progress: bool = True
    # The validation metric whose best epoch is kept in ``best.pt`` (higher is better); None:
    # keep no best weights.
    best_metric: str | None = None
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FitResult:
    steps: int
    history: list[dict[str, float]]
    resumed_from: int | None
    seconds: float
    images_per_second: float  # over this process's training steps, all ranks together
    best_epoch: int | None = None  # the epoch whose weights best.pt holds


def best_epoch(history: Sequence[Mapping[str, float]], metric: str) -> int | None:
    """The first epoch with the highest ``metric`` (NaN never wins)."""
    best: tuple[float, int] | None = None
    for row in history:
        value = row.get(metric, float("nan"))
        if not math.isnan(value) and (best is None or value > best[0]):
            best = (value, int(row["epoch"]))
    return None if best is None else best[1]


def load_best(checkpoint_dir: Path) -> dict[str, Any]:
    """``{"model": state dict, "epoch": int, "metric": str, "value": float}`` of best.pt."""
    return load_checkpoint(checkpoint_dir / BEST_FILE)


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint this engine wrote: its bytes checked against the digest written with it,
    then read with ``weights_only`` (tensors and plain containers; no pickled code runs).

    The digest catches what torch's reader does not: its zip entries are stored without
    compression, so a zeroed block inside a tensor loads as garbage weights without it.
    """
    data = path.read_bytes()
    digest = _digest_file(path)
    if digest.exists() and digest.read_text().strip() != hashlib.sha256(data).hexdigest():
        raise CorruptCheckpointError(
            f"{path}: its bytes differ from the sha256 in {digest.name} (corrupt or torn)"
        )
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's reader raises several kinds for a damaged file
        # weights_only meeting an object it will not build raises pickle's UnpicklingError
        # (matched by name: nothing in the pipeline imports pickle, and a test keeps it so).
        if type(exc).__name__ == "UnpicklingError":
            raise CorruptCheckpointError(
                f"{path}: refused: it holds pickled objects besides tensors (possibly code, "
                "never run here); delete it, or re-save it as tensors only"
            ) from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    return state


class EpochOrder(Sampler[int]):
    """This rank's share of the epoch's permutation, drawn from (seed, epoch).

    Global batch b of the epoch is ``permutation[b * B:(b + 1) * B]``; rank r takes its r-th
    slice of every global batch, starting at global batch ``start_batch`` (a resumed epoch).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int,
        batch_size: int,
        start_batch: int = 0,
        context: Distributed = distributed.SINGLE_PROCESS,
    ) -> None:
        per_rank = batch_size // context.world_size
        batches = n // batch_size
        order = epoch_rng(seed, epoch).permutation(n)[: batches * batch_size]
        mine = order.reshape(batches, batch_size)[
            start_batch:, context.rank * per_rank : (context.rank + 1) * per_rank
        ]
        self.order = mine.reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


class Indexed(Dataset[tuple[int, Any]]):
    """Items paired with their position in the dataset."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return type(batch)(to_device(value, device) for value in batch)  # type: ignore[call-arg]
    return batch


def _atomic_save(state: Mapping[str, Any], path: Path) -> None:
    """Serialise in memory, then write: torch's writer turns a failed write (a full disk) into
    an unhelpful RuntimeError, a plain file write raises the OSError that names it. The digest
    goes first, so no checkpoint is ever in place without its own."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getbuffer()
    write_text(_digest_file(path), hashlib.sha256(payload).hexdigest())
    with atomic_write(path, point="checkpoint.write") as handle:
        handle.write(payload)


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.split("-")[1]))


def latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a corrupt newest one falls back to the previous."""
    for path in reversed(_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except Exception as exc:  # a torn or corrupt file: warn and try the one before
            warnings.warn(f"{path}: unreadable checkpoint skipped ({exc})", stacklevel=2)
    return None


def validation_loader(
    val_set: Dataset[Any], batch_size: int, context: Distributed, num_workers: int = 0
) -> DataLoader[Any]:
    """This rank's disjoint share of the validation set, as ``(indices, items)`` batches."""
    indexed = Indexed(val_set)
    share = distributed.shard(len(indexed), context)
    return DataLoader(
        Subset(indexed, list(share)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
    )


def evaluation_sums(
    task: Task,
    model: nn.Module,
    val_set: Dataset[Any],
    device: torch.device,
    batch_size: int,
    context: Distributed = distributed.SINGLE_PROCESS,
) -> dict[str, Tensor]:
    """The task's additive validation state over the whole set: each rank's share, summed."""
    loader = validation_loader(val_set, batch_size, context)
    sums = task.validation_sums(model, loader, device)
    for value in sums.values():
        distributed.all_reduce_sum(value, context)
    return sums


def evaluate(
    task: Task,
    model: nn.Module,
    val_set: Dataset[Any],
    device: torch.device,
    batch_size: int,
    context: Distributed = distributed.SINGLE_PROCESS,
) -> dict[str, float]:
    """The task's metrics over the whole validation set, exact under DDP."""
    return task.summarise(evaluation_sums(task, model, val_set, device, batch_size, context))


def build_optimizer(task: Task, settings: EngineSettings, device: torch.device) -> Any:
    """AdamW over two groups, the backbone's and the new layers' learning rates (fused on CUDA)."""
    backbone, head = task.param_groups()
    return torch.optim.AdamW(
        [
            {"params": backbone, "lr": settings.lr_backbone},
            {"params": head, "lr": settings.lr_head},
        ],
        weight_decay=settings.weight_decay,
        fused=device.type == "cuda",
    )


def build_scheduler(optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up, then cosine to zero, stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps)
    )


@dataclass
class _Loop:
    """One ``fit``'s state, shared by its steps: set-up, resume, an epoch, an epoch's end."""

    task: Task
    settings: EngineSettings
    context: Distributed
    device: torch.device
    model: nn.Module  # the task's model, on the device: what is saved and evaluated
    forward_model: Any  # the same, wrapped by DDP and torch.compile where on: what is trained
    optimizer: Any
    scheduler: Any
    samples: int
    steps_per_epoch: int
    total: int
    step: int = 0
    resumed_from: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    # A resumed epoch's running loss, summed over all ranks, carried by the main rank alone so
    # that the epoch's all-reduce counts it once.
    partial: tuple[float, int] = (0.0, 0)
    trained_steps: int = 0
    train_seconds: float = 0.0
    bar: Any = None

    @property
    def per_rank(self) -> int:
        return self.settings.batch_size // self.context.world_size

    @property
    def images_per_second(self) -> float:
        return self.trained_steps * self.settings.batch_size / max(self.train_seconds, 1e-9)


def fit(
    task: Task,
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    settings: EngineSettings,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    context: Distributed | None = None,
) -> FitResult:
    """Train ``task.model`` in place; per-epoch metrics go to ``on_epoch`` on the main rank."""
    started = time.perf_counter()
    loop = _set_up(task, len(train_set), settings, context or distributed.from_environment())  # type: ignore[arg-type]
    _resume(loop)
    loop.bar = tqdm(
        total=loop.total,
        initial=loop.step,
        desc="train",
        disable=not (settings.progress and loop.context.is_main),
        unit="step",
    )
    while loop.step < loop.total:
        epoch, offset = divmod(loop.step, loop.steps_per_epoch)
        loss_sum, seen = _train_epoch(loop, train_set, epoch, offset)
        if loop.step % loop.steps_per_epoch == 0:
            _end_epoch(loop, val_set, epoch, loss_sum, seen, on_epoch)
    loop.bar.close()
    best = settings.best_metric
    return FitResult(
        loop.step,
        loop.history,
        loop.resumed_from,
        time.perf_counter() - started,
        loop.images_per_second,
        best_epoch(loop.history, best) if best else None,
    )


def _set_up(task: Task, samples: int, settings: EngineSettings, context: Distributed) -> _Loop:
    """The device, the process group, the placed and wrapped model, optimiser and schedule."""
    device = context.device(settings.device)
    distributed.initialise(context, device)
    if settings.batch_size % context.world_size:
        raise ValueError(
            f"batch size {settings.batch_size} is not divisible by {context.world_size} ranks"
        )
    torch.manual_seed(settings.seed)
    model = task.model.to(device)
    if settings.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    wrapped: nn.Module = model
    if context.enabled:
        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward_model: Any = (
        torch.compile(wrapped, backend=settings.compile_backend) if settings.compile else wrapped
    )
    optimizer = build_optimizer(task, settings, device)
    steps_per_epoch = samples // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{samples} training samples are fewer than one batch of {settings.batch_size}"
        )
    total = settings.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, settings.warmup_epochs * steps_per_epoch, total)
    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return _Loop(
        task, settings, context, device, model, forward_model, optimizer, scheduler,
        samples, steps_per_epoch, total,
    )  # fmt: skip


def _resume(loop: _Loop) -> None:
    """Continue from the newest readable checkpoint, if any: weights, optimiser, schedule, RNG."""
    checkpoint = latest_checkpoint(loop.settings.checkpoint_dir)
    if checkpoint is None:
        return
    loop.model.load_state_dict(checkpoint["model"])
    loop.optimizer.load_state_dict(checkpoint["optimizer"])
    loop.scheduler.load_state_dict(checkpoint["scheduler"])
    loop.step = loop.resumed_from = int(checkpoint["step"])
    loop.history = list(checkpoint["history"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if loop.context.is_main:
        loop.partial = (checkpoint["epoch_loss_sum"], checkpoint["epoch_seen"])


def _epoch_loader(loop: _Loop, train_set: Dataset[Any], epoch: int, offset: int) -> DataLoader[Any]:
    """The epoch's batches from step ``offset`` on, in the (seed, epoch) order: this rank's."""
    s, context = loop.settings, loop.context
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)  # before the workers are forked: they carry it
    return DataLoader(
        train_set,
        batch_size=loop.per_rank,
        drop_last=True,
        sampler=EpochOrder(loop.samples, s.seed, epoch, s.batch_size, offset, context),
        num_workers=s.num_workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(stream_seed(s.seed, epoch, context.rank)),
        pin_memory=loop.device.type == "cuda",
        collate_fn=Collate.for_prefetch(PREFETCH_BATCHES),
        prefetch_factor=PREFETCH_BATCHES if s.num_workers else None,
    )


def _train_step(loop: _Loop, batch: Any, autocast: torch.autocast) -> Tensor:
    """One optimiser step on one batch; the loss, still on the device."""
    batch = to_device(batch, loop.device)
    generator = step_generator(loop.settings.seed, loop.step, loop.device, loop.context.rank)
    with autocast:
        loss = loop.task.training_loss(loop.forward_model, batch, generator)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    nn.utils.clip_grad_norm_(loop.model.parameters(), loop.settings.grad_clip)
    loop.optimizer.step()
    loop.scheduler.step()
    return loss.detach()


def _train_epoch(
    loop: _Loop, train_set: Dataset[Any], epoch: int, offset: int
) -> tuple[Tensor, int]:
    """The rest of ``epoch`` from step ``offset``, with mid-epoch checkpoints; the running loss
    (a device tensor: no host sync per step) and the batches it sums."""
    loader = _epoch_loader(loop, train_set, epoch, offset)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=loop.device.type == "cuda")
    loop.model.train()
    loss_sum = torch.full((), loop.partial[0], device=loop.device)
    seen, loop.partial = loop.partial[1], (0.0, 0)
    tick, tick_step = time.perf_counter(), loop.step
    for batch in loader:
        loss_sum += _train_step(loop, batch, autocast)
        seen += 1
        loop.step += 1
        loop.bar.update(1)
        failpoint("train.step")
        if loop.step % READOUT_EVERY == 0:
            rate = (loop.step - tick_step) * loop.settings.batch_size / (time.perf_counter() - tick)
            loop.bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", img_s=f"{rate:.0f}")
        if loop.step % loop.settings.checkpoint_every == 0 and loop.step % loop.steps_per_epoch:
            _save(loop, *_reduce_running_loss(loop, loss_sum, seen).tolist())
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    loop.trained_steps += loop.step - tick_step
    loop.train_seconds += time.perf_counter() - tick
    return loss_sum, seen


def _reduce_running_loss(loop: _Loop, loss_sum: Tensor, seen: int) -> Tensor:
    """(loss sum, batches) over all ranks."""
    running = torch.stack([loss_sum, torch.tensor(float(seen), device=loop.device)])
    return distributed.all_reduce_sum(running, loop.context)


def _end_epoch(
    loop: _Loop,
    val_set: Dataset[Any],
    epoch: int,
    loss_sum: Tensor,
    seen: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """Validate, keep the best weights, report the epoch and checkpoint it."""
    distributed.broadcast_buffers(loop.model, loop.context)
    totals = _reduce_running_loss(loop, loss_sum, seen)
    eval_batch = loop.settings.eval_batch_size or loop.per_rank
    validation = evaluate(loop.task, loop.model, val_set, loop.device, eval_batch, loop.context)
    metrics = {
        "epoch": float(epoch + 1),
        "train_loss": (totals[0] / totals[1].clamp(min=1)).item(),
        **validation,
    }
    loop.history.append(metrics)  # deterministic figures only: a resumed run must match
    _keep_best(loop, epoch, metrics)
    if on_epoch is not None and loop.context.is_main:
        on_epoch(epoch + 1, {**metrics, "images_per_second": loop.images_per_second})
    shown = {name: f"{value:.3f}" for name, value in validation.items() if name in loop.task.shown}
    loop.bar.set_postfix(
        loss=f"{metrics['train_loss']:.4f}", **shown, img_s=f"{loop.images_per_second:.0f}"
    )
    _save(loop, 0.0, 0.0)


def _keep_best(loop: _Loop, epoch: int, metrics: Mapping[str, float]) -> None:
    """``best.pt``: the weights of the best epoch so far by ``settings.best_metric``."""
    best = loop.settings.best_metric
    if best is None or not loop.context.is_main or best_epoch(loop.history, best) != epoch + 1:
        return
    _atomic_save(
        {
            "model": loop.model.state_dict(),
            "epoch": epoch + 1,
            "metric": best,
            "value": metrics[best],
        },
        loop.settings.checkpoint_dir / BEST_FILE,
    )


def _save(loop: _Loop, epoch_loss_sum: float, epoch_seen: float) -> None:
    """A checkpoint of the step (the main rank writes it); the oldest beyond the kept ones go."""
    settings, context = loop.settings, loop.context
    if context.is_main:
        _atomic_save(
            {
                "model": loop.model.state_dict(),
                "optimizer": loop.optimizer.state_dict(),
                "scheduler": loop.scheduler.state_dict(),
                "step": loop.step,
                "history": loop.history,
                "torch_rng": torch.get_rng_state(),
                "epoch_loss_sum": epoch_loss_sum,
                "epoch_seen": int(epoch_seen),
                "world_size": context.world_size,
            },
            settings.checkpoint_dir / f"step-{loop.step:08d}.pt",
        )
        for old in _checkpoints(settings.checkpoint_dir)[: -settings.keep_checkpoints]:
            old.unlink(missing_ok=True)
            _digest_file(old).unlink(missing_ok=True)
    distributed.barrier(context)
