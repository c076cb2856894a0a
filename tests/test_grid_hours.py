"""benchmarks/grid_hours.py: the paper grid's jobs and their arithmetic (FLOPs counted by a
stand-in, so that the sums can be checked by hand)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN, FORWARD = 3.0e9, 1.0e9  # the stand-in's FLOPs per image


@pytest.fixture
def grid_hours(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import grid_hours as module

    monkeypatch.setattr(module, "count", lambda case: (TRAIN, FORWARD))
    return module


def test_the_paper_grid_is_8_pretrain_variants_and_90_cells(grid_hours: ModuleType) -> None:
    from pipeline.config import load_params

    jobs = grid_hours.grid_jobs(load_params(ROOT / "params.yaml"))
    kinds = [job.kind for job in jobs]
    assert (kinds.count("pretrain"), kinds.count("finetune"), kinds.count("evaluate")) == (
        8,
        90,
        90,
    )
    sop = [job for job in jobs if job.kind == "finetune" and "-sop-" in job.name]
    assert {job.after for job in sop} == {"vits14-112-0.0", "resnet50-112-0.0"}  # the main variant


def test_a_jobs_flops_are_its_epochs_images_and_validation(grid_hours: ModuleType) -> None:
    from pipeline.config import load_params

    params = load_params(ROOT / "params.yaml")
    jobs = {(job.kind, job.name): job for job in grid_hours.grid_jobs(params)}
    lcai = grid_hours.DATASET_TILES["landcoverai"]
    pretrain = jobs[("pretrain", "vits14-112-0.4")]
    assert pretrain.flops == 150 * (lcai.train * TRAIN + lcai.val * FORWARD)
    cell = jobs[("finetune", "landcoverai-resnet50-sop-0.25-s0")]
    windows = 4  # 448 px windows over 512 px tiles
    images = 50 * math.ceil(0.25 * lcai.train)
    assert cell.images == images
    assert cell.flops == images * TRAIN + 50 * lcai.val * windows * FORWARD
    test = jobs[("evaluate", "landcoverai-resnet50-sop-0.25-s0")]
    assert test.flops == lcai.test * windows * FORWARD


def test_eight_gpus_take_between_an_eighth_and_the_whole_of_one(grid_hours: ModuleType) -> None:
    from pipeline.config import load_params

    jobs = grid_hours.grid_jobs(load_params(ROOT / "params.yaml"))
    one, eight = grid_hours.wall_hours(jobs, 1), grid_hours.wall_hours(jobs, 8)
    assert one == pytest.approx(sum(job.hours for job in jobs))
    longest_pretrain = max(job.hours for job in jobs if job.kind == "pretrain")
    assert max(one / 8, longest_pretrain) <= eight < one
