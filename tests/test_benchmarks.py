"""Smoke test of the CPU benchmarks at a tiny size: they run and return positive figures.

No timing thresholds: the figures depend on the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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


@pytest.mark.slow
@pytest.mark.usefixtures("benchmarks")
def test_predict_figures_are_positive(tmp_path: Path) -> None:
    import predict

    figures = predict.run([128], [256], tmp_path)
    assert [(row["case"], row["scene"]) for row in figures["rows"]] == [
        ("resnet cell", "128x128"),
        ("1x1 conv", "256x256"),
    ]
    for row in figures["rows"]:
        for key in ("predict_s", "mpx_s", "peak_rss_mb", "rss_after_imports_mb"):
            assert row[key] > 0, (row["case"], key)
        assert row["peak_rss_mb"] >= row["rss_after_imports_mb"]


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


@pytest.mark.usefixtures("benchmarks")
def test_grid_figures_from_a_timeline() -> None:
    import grid

    def attempt(worker: str, ready: float, started: float, ended: float) -> dict[str, Any]:
        return {"worker": worker, "ready": ready, "submitted": ready + 0.1, "started": started,
                "ended": ended, "noticed": ended + 0.5}  # fmt: skip

    # Two slots: a at 1-10, b at 2-9; then a third stage, ready at 0 as well, waits for b and
    # starts 3 s after b is free (the wait for the slot is no overhead).
    record = {"attempts": [attempt("a", 0, 1, 10), attempt("b", 0, 2, 9), attempt("b", 0, 12, 20)]}
    figures = grid.summarise(record, slots=2)
    assert figures["stages"] == 3
    assert figures["grid_wall_s"] == pytest.approx(20.4)  # first submitted to last noticed
    assert figures["busy_slot_s"] == pytest.approx(9 + 7 + 8)
    assert figures["utilisation"] == pytest.approx(24 / (2 * 20.4), abs=1e-3)
    assert figures["pick_up_s"] == (2.0, 3.0)  # delays 1, 2 and 3
    assert figures["ready_to_submitted_s"] == (0.1, 0.1)
    assert figures["finished_to_noticed_s"] == (0.5, 0.5)
    runs = [{**figures, "workers": n, "command_s": 30.0} for n in (1, 2)]
    info = {"date": "d", "commit": "c", "machine": {"cpu": "x", "cores": "2"}}
    text = grid.render(runs, info)
    assert "Speed-up of the grid at 2 workers: 1.00x" in text
