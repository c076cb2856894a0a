"""One training engine for pretraining and fine-tuning; a task supplies model, loss and metrics.

What lives here once: AdamW with parameter groups (backbone and new layers), linear warm-up then
cosine, gradient clipping, bf16 autocast on CUDA (fp32 on CPU), channels_last, optional
torch.compile, atomic checkpoints every N steps (model, optimiser, scheduler, step, RNG) with
resume from the newest one that loads, a progress bar, and per-epoch metrics to a callback.

Determinism: the data order of each epoch is a permutation drawn from (seed, epoch), and the
task's randomness at step t comes from a generator seeded with (seed, t). A run resumed at any
checkpoint therefore sees exactly the batches and samples an uninterrupted run sees, and ends
with the same metrics on CPU.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

CHECKPOINT_GLOB = "step-*.pt"


class Task(Protocol):
    """What the engine needs from pretraining or fine-tuning."""

    model: nn.Module

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters)."""
        ...

    def training_loss(
        self, model: nn.Module, batch: Tensor, generator: torch.Generator
    ) -> Tensor: ...

    def evaluate(
        self, model: nn.Module, loader: DataLoader[Tensor], device: torch.device
    ) -> dict[str, float]: ...


@dataclass(frozen=True)
class EngineSettings:
    epochs: int
    batch_size: int
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
    channels_last: bool = True
    num_workers: int = 0
    progress: bool = True
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FitResult:
    steps: int
    history: list[dict[str, float]]
    resumed_from: int | None
    seconds: float


class EpochOrder(Sampler[int]):
    """A permutation per epoch from (seed, epoch), starting at ``start`` (for a resumed epoch)."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0) -> None:
        self.order = np.random.default_rng([seed, epoch]).permutation(n)[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The task's randomness for one step: independent of where a run was resumed."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _atomic_save(state: Mapping[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(dict(state), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.split("-")[1]))


def latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a corrupt newest one falls back to the previous."""
    for path in reversed(_checkpoints(directory)):
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
            return state
        except Exception as exc:  # a torn or corrupt file: warn and try the one before
            warnings.warn(f"{path}: unreadable checkpoint skipped ({exc})", stacklevel=2)
    return None


def fit(
    task: Task,
    train_set: Dataset[Tensor],
    val_loader: DataLoader[Tensor],
    settings: EngineSettings,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    started = time.perf_counter()
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = task.model.to(device)
    if settings.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward_model: Any = torch.compile(model) if settings.compile else model
    backbone, head = task.param_groups()
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone, "lr": settings.lr_backbone},
            {"params": head, "lr": settings.lr_head},
        ],
        weight_decay=settings.weight_decay,
        fused=device.type == "cuda",
    )
    n = len(train_set)  # type: ignore[arg-type]
    steps_per_epoch = max(1, n // settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = settings.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    history: list[dict[str, float]] = []
    step, resumed_from = 0, None
    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(settings.checkpoint_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step = resumed_from = int(checkpoint["step"])
        history = list(checkpoint["history"])
        torch.set_rng_state(checkpoint["torch_rng"])
    # The running loss of a resumed epoch continues from the checkpoint's.
    partial_sum = float(checkpoint["epoch_loss_sum"]) if checkpoint else 0.0
    partial_seen = int(checkpoint["epoch_seen"]) if checkpoint else 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(total=total, initial=step, desc="train", disable=not settings.progress, unit="step")
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        loader = DataLoader(
            train_set,
            batch_size=settings.batch_size,
            drop_last=True,
            sampler=EpochOrder(n, settings.seed, epoch, offset * settings.batch_size),
            num_workers=settings.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        model.train()
        loss_sum = torch.full((), partial_sum, device=device)
        seen, partial_sum, partial_seen = partial_seen, 0.0, 0
        tick, tick_seen = time.perf_counter(), seen
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with autocast:
                loss = task.training_loss(
                    forward_model, batch, step_generator(settings.seed, step, device)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()  # stays on the device: no host sync per step
            seen += 1
            step += 1
            bar.update(1)
            if step % 20 == 0:  # the only host syncs: a progress readout now and then
                rate = (seen - tick_seen) * settings.batch_size / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", img_s=f"{rate:.0f}")
            if step % settings.checkpoint_every == 0 and step % steps_per_epoch:
                _save(settings, model, optimizer, scheduler, step, history, loss_sum.item(), seen)
        if step % steps_per_epoch == 0:
            metrics = {
                "epoch": float(step // steps_per_epoch),
                "train_loss": loss_sum.item() / max(1, seen),
                **task.evaluate(forward_model, val_loader, device),
            }
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(step // steps_per_epoch, metrics)
            bar.set_postfix(
                loss=f"{metrics['train_loss']:.4f}",
                iou=f"{metrics.get('val_iou', float('nan')):.3f}",
            )
            _save(settings, model, optimizer, scheduler, step, history, 0.0, 0)
    bar.close()
    return FitResult(step, history, resumed_from, time.perf_counter() - started)


def _save(
    settings: EngineSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    history: list[dict[str, float]],
    epoch_loss_sum: float,
    epoch_seen: int,
) -> None:
    _atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "history": history,
            "torch_rng": torch.get_rng_state(),
            "epoch_loss_sum": epoch_loss_sum,
            "epoch_seen": epoch_seen,
        },
        settings.checkpoint_dir / f"step-{step:08d}.pt",
    )
    for old in _checkpoints(settings.checkpoint_dir)[: -settings.keep_checkpoints]:
        old.unlink(missing_ok=True)
