"""Every seed a run derives from its one seed: the epoch's order, each step's and each
sample's randomness, the loader workers'. Each is a pure function of (seed, position), so a
resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import torch


def stream_seed(seed: int, counter: int, rank: int = 0) -> int:
    """One torch generator's seed per (run seed, step or epoch, DDP rank)."""
    return (seed * 1_000_003 + counter) * 1009 + rank


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The epoch's sample order: the same on every rank (each then takes its share)."""
    return np.random.default_rng([seed, epoch])


def step_generator(seed: int, step: int, device: torch.device, rank: int = 0) -> torch.Generator:
    """The task's randomness for one step: independent of where a run was resumed."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, step, rank))


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: numpy and random follow torch's per-worker seed (augmentations)."""
    _forget_inherited_thread_exit_hooks()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - the global state is what third-party code reads
    random.seed(seed)


def _forget_inherited_thread_exit_hooks() -> None:
    """Drop the parent's ``threading`` exit hooks in a forked worker.

    Prefect's background services register one per process; after a fork, Prefect resets the
    service but not the hook, which then fails an assertion as the worker exits, so every
    worker of a loader created after a flow has run (every stage's) ends with exit code 1 and
    torch aborts the epoch. A worker has nothing of the parent's to drain.
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        hooks.clear()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed per (run seed, epoch, sample): splitmix-style mixing, no collisions nearby."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & (2**64 - 1)
    value ^= value >> 31
    value = (value * 0x94D049BB133111EB) & (2**64 - 1)
    return (value ^ (value >> 29)) & 0xFFFFFFFF
