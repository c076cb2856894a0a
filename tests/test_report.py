"""The report from the stages' metrics files: one row per cell, the paper table, and each of
the paper's claims judged on constructed results whose verdict is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from pipeline import layout
from pipeline.errors import DataError
from pipeline.report import check_claims, collect, paper_table, write_report

# init -> fraction -> (test mIoU, epoch to 0.60 or None)
SOP_WINS_MORE_WITH_FEWER_LABELS = {
    "random": {1.0: (0.60, 9), 0.5: (0.50, None), 0.25: (0.40, None)},
    "imagenet": {1.0: (0.62, 6), 0.5: (0.52, None), 0.25: (0.41, None)},
    "sop": {1.0: (0.63, 4), 0.5: (0.56, 8), 0.25: (0.47, None)},
}


class Named(NamedTuple):
    """A cell as the layout names its files (the flows' ``Cell`` has the same two fields)."""

    dataset: str
    name: str


def write_cells(
    root: Path,
    results: dict[str, dict[float, tuple[float, int | None]]],
    dataset: str = "landcoverai",
    backbone: str = "resnet50",
    split: str = "test",
    seed: int = 0,
) -> None:
    """The finetune and evaluate stages' files for each (init, fraction), as the flows name
    them (``<dataset>/<backbone>-<init>-<fraction>-s<seed>``)."""
    for init, by_fraction in results.items():
        for fraction, (miou, epoch) in by_fraction.items():
            cell = Named(dataset, f"{backbone}-{init}-{fraction}-s{seed}")
            identity = {
                "dataset": dataset,
                "backbone": backbone,
                "init": init,
                "fraction": fraction,
                "seed": seed,
            }
            for path, payload in (
                (
                    layout.finetune_metrics_path(root, cell),
                    {"best_val_miou": miou + 0.01, "convergence_epoch": epoch},
                ),
                (
                    layout.evaluate_metrics_path(root, cell),
                    {"test_miou": miou, "test_iou_water": miou + 0.1, "split": split},
                ),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(identity | payload))
            curve = layout.finetune_curve_path(root, cell)
            curve.parent.mkdir(parents=True, exist_ok=True)
            curve.write_text(f"epoch,train_loss,val_miou\n1,1.0,0.3\n2,0.8,{miou}\n")


def test_a_metrics_file_without_its_cell_identity_is_a_clear_error(tmp_path: Path) -> None:
    write_cells(tmp_path, {"sop": {1.0: (0.6, 3)}})
    (path,) = (layout.evaluate_metrics_dir(tmp_path) / "landcoverai").glob("*.json")
    path.write_text(json.dumps({"test_miou": 0.6}))
    with pytest.raises(DataError, match="no 'dataset' field"):
        collect(tmp_path)


def test_seeds_are_rows_and_ablation_encoders_stay_out_of_the_claims(tmp_path: Path) -> None:
    write_cells(tmp_path, {"random": {1.0: (0.60, 5)}, "sop": {1.0: (0.62, 4)}}, seed=0)
    write_cells(tmp_path, {"random": {1.0: (0.58, 6)}, "sop": {1.0: (0.64, 3)}}, seed=1)
    # An ablation that would lose every comparison if it were counted as "the" SOP init.
    write_cells(tmp_path, {"sop-56-0.0": {1.0: (0.10, None)}})
    table = collect(tmp_path)
    assert len(table) == 5
    assert sorted(table[table["init"] == "sop"]["seed"]) == [0, 1]
    assert "landcoverai/resnet50-sop-56-0.0-1.0-s0" in set(table["cell"])
    verdicts = check_claims(table)
    assert [v.verdict for v in verdicts][:2] == ["holds", "holds"], verdicts
    assert paper_table(table).loc["sop", ("landcoverai", "resnet50", 1.0)] == pytest.approx(0.63)


def test_one_row_per_cell_with_the_figures_of_both_stages(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    table = collect(tmp_path)
    assert len(table) == 9
    row = table[(table["init"] == "sop") & (table["label_fraction"] == 0.5)].iloc[0]
    assert row["test_miou"] == 0.56
    assert row["best_val_miou"] == pytest.approx(0.57)
    assert row["epoch_to_threshold"] == 8
    assert row["test_iou_water"] == pytest.approx(0.66)
    pivot = paper_table(table)
    assert pivot.loc["imagenet", ("landcoverai", "resnet50", 0.25)] == 0.41
    assert [f for _, _, f in pivot.columns] == [1.0, 0.5, 0.25]


def test_claims_that_hold_are_said_to_hold() -> None:
    rows = [
        {
            "dataset": "d",
            "backbone": "b",
            "init": init,
            "label_fraction": fraction,
            "seed": 0,
            "test_miou": miou,
            "epoch_to_threshold": epoch,
        }
        for init, by_fraction in SOP_WINS_MORE_WITH_FEWER_LABELS.items()
        for fraction, (miou, epoch) in by_fraction.items()
    ]
    faster, better, widening = check_claims(pd.DataFrame(rows))
    assert faster.verdict == "holds"  # 0.25: nobody converged, so not compared
    assert len(faster.evidence) == 2
    assert better.verdict == "holds"
    assert widening.verdict == "holds"
    assert "1: +0.010, 0.5: +0.040, 0.25: +0.060" in widening.evidence[0]


def test_claims_that_fail_or_cannot_be_checked_say_so() -> None:
    def frame(results: dict[str, dict[float, tuple[float, int | None]]]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "dataset": "d",
                    "backbone": "b",
                    "init": i,
                    "label_fraction": f,
                    "seed": 0,
                    "test_miou": m,
                    "epoch_to_threshold": e,
                }
                for i, by in results.items()
                for f, (m, e) in by.items()
            ]
        )

    worse = {
        "random": {1.0: (0.60, 3), 0.5: (0.55, 5)},
        "sop": {1.0: (0.63, 4), 0.5: (0.50, None)},  # slower, and behind at 0.5
    }
    faster, better, widening = check_claims(frame(worse))
    assert faster.verdict == "does not hold"
    assert better.verdict == "partly holds (1 of 2)"
    assert widening.verdict == "does not hold"
    only_sop = {"sop": {1.0: (0.6, 2)}}
    assert {v.verdict for v in check_claims(frame(only_sop))} == {"not measurable"}


def test_report_files_and_the_val_only_note(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    write_cells(
        tmp_path,
        {"random": {1.0: (0.4, None)}, "sop": {1.0: (0.45, 3)}},
        "loveda",
        "resnet50",
        split="val",
    )
    out = write_report(tmp_path, layout.results_dir(tmp_path), threshold=0.6)
    results = pd.read_csv(out["results"])
    assert list(results.columns[:8]) == [
        "dataset",
        "backbone",
        "init",
        "label_fraction",
        "seed",
        "best_val_miou",
        "epoch_to_threshold",
        "test_miou",
    ]
    assert len(results) == 11
    report = out["report"].read_text()
    assert "| sop | 0.630 | 0.560 | 0.470 | 0.450 |" in report
    assert "SOP reaches equal or better test mIoU: holds." in report
    assert "Evaluated on the val split" in report
    assert "['loveda']" in report
    for name in ("curves_landcoverai_resnet50", "fractions_loveda_resnet50"):
        assert out[name].read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in report


def test_no_evaluated_cells_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no evaluated cells"):
        collect(tmp_path)
