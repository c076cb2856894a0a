"""DDP building blocks on one process: the data each rank sees, the validation it computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.train import distributed
from pipeline.train.distributed import Distributed
from pipeline.train.engine import EpochOrder
from pipeline.train.seeds import step_generator


@given(
    n=st.integers(1, 200),
    world=st.sampled_from([1, 2, 4]),
    per_rank=st.integers(1, 8),
    epoch=st.integers(0, 5),
    start=st.integers(0, 10),
)
def test_ranks_split_every_global_batch_of_the_single_process_order(
    n: int, world: int, per_rank: int, epoch: int, start: int
) -> None:
    batch = world * per_rank
    single = EpochOrder(n, 7, epoch, batch, start).order
    shares = [
        EpochOrder(n, 7, epoch, batch, start, Distributed(r, world)).order for r in range(world)
    ]
    assert all(len(s) == len(shares[0]) for s in shares)
    steps = len(single) // batch
    rebuilt = np.stack([s.reshape(steps, per_rank) for s in shares], axis=1).reshape(-1)
    assert rebuilt.tolist() == single.tolist()
    assert len(set(single.tolist())) == len(single)  # no tile twice in an epoch


@given(n=st.integers(0, 100), world=st.integers(1, 8))
def test_validation_shards_cover_each_sample_once(n: int, world: int) -> None:
    shares = [distributed.shard(n, Distributed(r, world)) for r in range(world)]
    flat = [i for share in shares for i in share]
    assert flat == list(range(n))
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_each_rank_draws_its_own_randomness_for_a_step() -> None:
    cpu = torch.device("cpu")
    draws = [torch.rand(4, generator=step_generator(0, 5, cpu, rank)) for rank in (0, 1)]
    assert not torch.equal(draws[0], draws[1])
    again = torch.rand(4, generator=step_generator(0, 5, cpu, 0))
    assert torch.equal(draws[0], again)


def test_one_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    context = distributed.from_environment()
    assert not context.enabled
    assert context.is_main
    value = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(value, context).tolist() == [1.0, 2.0]


def test_torchrun_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = distributed.from_environment()
    assert (context.rank, context.world_size, context.enabled, context.is_main) == (
        3,
        4,
        True,
        False,
    )
    assert context.device("cuda") == torch.device("cuda", 1)
    assert context.device("cpu") == torch.device("cpu")


def test_a_torchrun_launch_of_one_process_joins_a_process_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    context = distributed.from_environment()
    assert (context.world_size, context.enabled, context.is_main) == (1, True, True)
