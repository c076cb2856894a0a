"""Data-parallel training with DDP, launched by torchrun (or one process with no launcher).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is one process.
Under torchrun a run joins a process group even as its only rank, so that
``--nproc_per_node=1`` runs the NCCL and DDP path of a multi-GPU launch.
The backend is NCCL on CUDA and gloo on CPU, so the multi-process path runs (and is tested) on
a machine without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (a process group, even of one)

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, kind: str) -> torch.device:
        """This rank's device: its own GPU under torchrun, else ``kind``."""
        if kind == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(kind)


SINGLE_PROCESS = Distributed()


def from_environment() -> Distributed:
    """The process's place in a torchrun launch; a single process without one."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return SINGLE_PROCESS
    return Distributed(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
        launched=True,
    )


def initialise(context: Distributed, device: torch.device) -> None:
    """Join the process group (a no-op for one process or when already joined)."""
    if not context.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=context.rank,
        world_size=context.world_size,
    )


def shutdown(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, context: Distributed) -> Tensor:
    """Sum over ranks in place (the identity for one process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, context: Distributed) -> None:
    """Give every rank the main rank's buffers (BatchNorm running statistics).

    DDP copies them at the start of each training forward, so after the last one each rank
    holds statistics of its own batches; evaluation and the checkpoint must use one set.
    """
    if context.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(context: Distributed) -> None:
    if context.enabled:
        dist.barrier()


def shard(n: int, context: Distributed) -> range:
    """This rank's contiguous share of ``n`` evaluation samples; shares differ by at most one.

    Every sample is evaluated exactly once (no padding duplicates), so summed metrics equal the
    single-process ones.
    """
    start = n * context.rank // context.world_size
    stop = n * (context.rank + 1) // context.world_size
    return range(start, stop)
