"""Smoke test of the CPU benchmarks at a tiny size: they run and return positive figures.

No timing thresholds: the figures depend on the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def benchmarks() -> None:
    sys.path.insert(0, str(BENCHMARKS))


@pytest.mark.slow
@pytest.mark.usefixtures("benchmarks")
def test_data_path_figures_are_positive(tmp_path: Path) -> None:
    import data_path

    figures = data_path.run(
        scenes=2,
        height=1100,
        width=1200,
        workers=(1,),
        seconds=0.2,
        pretext_batch=4,
        seg_batch=2,
        work=tmp_path,
    )
    assert {row["case"] for row in figures["rows"]} == {
        "pretext_loader",
        "pretext_sampled",
        "segmentation",
    }
    for row in figures["rows"]:
        for key in ("store_samples_s", "png_samples_s", "jpg_samples_s", "ratio_vs_png"):
            assert row[key] > 0, (row["case"], key)


@pytest.mark.slow
@pytest.mark.usefixtures("benchmarks")
def test_tiling_figures_are_positive(tmp_path: Path) -> None:
    import tiling

    figures = tiling.run(sizes=((1100, 1200),), repeats=1, work=tmp_path)
    assert {row["method"] for row in figures["rows"]} == {"project", "project_1thread", "official"}
    for row in figures["rows"]:
        assert row["tiles"] == 4
        for key in ("seconds", "mb_s", "peak_rss_mb", "peak_anon_mb"):
            assert row[key] > 0, (row["method"], key)


@pytest.mark.usefixtures("benchmarks")
def test_demo_timings_split_work_stage_overhead_and_dvc() -> None:
    import demo_stages

    records = [  # two stage processes, a 2 s gap between them (DVC), 3 s before and after
        {"argv": ["tile.py", "landcoverai"], "started": 103.0, "exited": 110.0, "work": {"t": 5}},
        {"argv": ["report.py"], "started": 112.0, "exited": 114.0, "work": {"r": 0.5}},
    ]
    figures = demo_stages.tabulate(records, total=20.0)
    assert figures["work_s"] == 5.5
    assert figures["stage_overhead_s"] == 3.5
    assert figures["between_stages_s"] == 2.0
    assert figures["once_s"] == 11.0 - 2.0
    assert figures["per_invocation_share"] == pytest.approx(5.5 / 20)
    assert figures["orchestration_share"] == pytest.approx(14.5 / 20)
    assert [row["stage"] for row in figures["rows"]] == ["tile landcoverai", "report"]
