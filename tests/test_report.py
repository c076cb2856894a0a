"""The report from the stages' files: one row per cell with its intervals, the paper table, the
metrics' definitions, and each claim judged on constructed results whose verdict is known."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from pipeline import layout
from pipeline.claims import Bootstrap, Evidence, check_claims
from pipeline.errors import DataError
from pipeline.intervals import TileConfusion, miou, per_image_miou
from pipeline.report import (
    collect,
    html_report,
    load_confusions,
    paper_table,
    submission_lines,
    write_report,
)

TILES = 24
# init -> fraction -> (accuracy on every tile, epoch to the threshold or None)
Results = dict[str, dict[float, tuple[float, int | None]]]
SOP_WINS_MORE_WITH_FEWER_LABELS: Results = {
    "random": {1.0: (0.80, 9), 0.5: (0.70, None), 0.25: (0.60, None)},
    "imagenet": {1.0: (0.81, 6), 0.5: (0.71, None), 0.25: (0.61, None)},
    "sop": {1.0: (0.84, 4), 0.5: (0.78, 8), 0.25: (0.72, None)},
}


class Named(NamedTuple):
    """A cell as the layout names its files (the flows' ``Cell`` has the same two fields)."""

    dataset: str
    name: str


def tile_matrices(accuracy: float, wobble: float = 0.05, flip: bool = False) -> np.ndarray:
    """(TILES, 2, 2): two classes of 100 pixels per tile, each right ``accuracy`` of the time,
    give or take a per-tile ``wobble`` (the same on every cell unless ``flip`` reverses it)."""
    sign = -1.0 if flip else 1.0
    matrices = []
    for tile in range(TILES):
        right = round(100 * min(1.0, max(0.0, accuracy + sign * wobble * math.sin(3 * tile))))
        matrices.append([[right, 100 - right], [100 - right, right]])
    return np.asarray(matrices, dtype=np.int64)


def write_cell(
    root: Path, identity: dict[str, object], matrices: np.ndarray, epoch: int | None, split: str
) -> None:
    """The finetune and evaluate stages' files of one cell, as the flows name them."""
    name = "{backbone}-{init}-{fraction}-s{seed}".format(**identity)
    cell = Named(str(identity["dataset"]), name)
    confusion = TileConfusion(matrices, np.arange(TILES), ("field", "forest"), (0, 1), None)
    confusion.write(layout.tile_confusion_path(root, cell))
    test_miou = float(miou(matrices.sum(0), (0, 1)))
    per_image = per_image_miou(confusion)
    for path, payload in (
        (
            layout.finetune_metrics_path(root, cell),
            {"best_val_miou": test_miou + 0.01, "convergence_epoch": epoch},
        ),
        (
            layout.evaluate_metrics_path(root, cell),
            {"test_miou": test_miou, "test_miou_per_image": per_image, "split": split},
        ),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(identity | payload))
    curve = layout.finetune_curve_path(root, cell)
    curve.parent.mkdir(parents=True, exist_ok=True)
    curve.write_text(f"epoch,train_loss,val_miou\n1,1.0,0.3\n10,0.8,{test_miou}\n")


def write_cells(
    root: Path,
    results: Results,
    dataset: str = "landcoverai",
    split: str = "test",
    seed: int = 0,
    wobble: float = 0.05,
    flip: set[str] | None = None,
) -> None:
    for init, by_fraction in results.items():
        for fraction, (accuracy, epoch) in by_fraction.items():
            identity = {"dataset": dataset, "backbone": "resnet50", "init": init}
            identity |= {"fraction": fraction, "seed": seed}
            matrices = tile_matrices(accuracy, wobble, init in (flip or set()))
            write_cell(root, identity, matrices, epoch, split)


def verdicts(root: Path) -> dict[str, str]:
    table = collect(root)
    evidence = Evidence.of(table, load_confusions(root, table), Bootstrap(500, 0.95, 0))
    judged = check_claims(table, evidence, never=11.0)
    return {v.claim.split()[1]: v.verdict for v in judged} | {
        f"{v.claim.split()[1]}-evidence": " | ".join(v.evidence) for v in judged
    }


def test_a_clear_tile_by_tile_win_holds_and_a_clear_loss_does_not(tmp_path: Path) -> None:
    write_cells(tmp_path / "win", {"random": {1.0: (0.70, 5)}, "sop": {1.0: (0.80, 4)}})
    write_cells(tmp_path / "loss", {"random": {1.0: (0.80, 5)}, "sop": {1.0: (0.70, 4)}})
    won, lost = verdicts(tmp_path / "win"), verdicts(tmp_path / "loss")
    assert won["reaches"] == "holds", won
    assert lost["reaches"] == "does not hold", lost
    assert "tile bootstrap, 24 tiles, 1 seed" in won["reaches-evidence"]


def test_a_difference_that_changes_sign_from_tile_to_tile_is_inconclusive(tmp_path: Path) -> None:
    # SOP is far better on half the tiles and far worse on the other half.
    write_cells(
        tmp_path, {"random": {1.0: (0.75, 5)}, "sop": {1.0: (0.75, 4)}}, wobble=0.2, flip={"sop"}
    )
    judged = verdicts(tmp_path)
    assert judged["reaches"] == "inconclusive", judged


def test_seeds_are_paired_from_three_on(tmp_path: Path) -> None:
    for seed, (theirs, mine) in enumerate([(0.70, 0.74), (0.72, 0.75), (0.71, 0.76)]):
        write_cells(tmp_path, {"random": {1.0: (theirs, 8)}, "sop": {1.0: (mine, 4)}}, seed=seed)
    judged = verdicts(tmp_path)
    assert judged["reaches"] == "holds"
    assert "paired over 3 seeds" in judged["reaches-evidence"]
    assert judged["converges"] == "holds", judged  # 4 epochs earlier on every seed


def test_a_seed_spread_that_straddles_zero_is_inconclusive(tmp_path: Path) -> None:
    for seed, (theirs, mine) in enumerate([(0.70, 0.78), (0.76, 0.70), (0.72, 0.73)]):
        write_cells(tmp_path, {"random": {1.0: (theirs, 4)}, "sop": {1.0: (mine, 7)}}, seed=seed)
    judged = verdicts(tmp_path)
    assert judged["reaches"] == "inconclusive", judged
    assert judged["converges"] == "does not hold", judged  # 3 epochs later on every seed


def test_convergence_from_one_seed_is_inconclusive_however_large_the_gap(tmp_path: Path) -> None:
    write_cells(tmp_path, {"random": {1.0: (0.70, 10)}, "sop": {1.0: (0.80, 1)}})
    judged = verdicts(tmp_path)
    assert judged["converges"] == "inconclusive"
    assert "1 paired seed(s), 3 needed" in judged["converges-evidence"]


def test_a_gap_that_widens_as_labels_shrink_holds(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    judged = verdicts(tmp_path)
    assert judged["gap"] == "holds", judged
    assert judged["reaches"] == "holds"
    assert "gap at 0.25 minus gap at 1 +" in judged["gap-evidence"]


def test_mixed_outcomes_are_counted_and_only_sop_is_not_measurable(tmp_path: Path) -> None:
    mixed = {"random": {1.0: (0.70, 5), 0.5: (0.70, 5)}, "sop": {1.0: (0.80, 4), 0.5: (0.60, 6)}}
    write_cells(tmp_path / "mixed", mixed)
    judged = verdicts(tmp_path / "mixed")
    assert judged["reaches"] == "mixed: holds in 1, does not hold in 1 of 2"
    assert judged["gap"] == "does not hold"
    write_cells(tmp_path / "alone", {"sop": {1.0: (0.8, 2)}})
    assert set(verdicts(tmp_path / "alone").values()) >= {"not measurable"}


def test_ablation_and_swept_encoders_stay_out_of_the_claims(tmp_path: Path) -> None:
    write_cells(tmp_path, {"random": {1.0: (0.70, 5)}, "sop": {1.0: (0.80, 4)}})
    # Encoders that would win or lose every comparison if counted as "the" SOP or a rival.
    write_cells(tmp_path, {"sop-56-0.0": {1.0: (0.10, None)}, "sop@0.25": {1.0: (0.99, 1)}})
    table = collect(tmp_path)
    assert len(table) == 4
    judged = verdicts(tmp_path)
    assert judged["reaches"] == "holds", judged
    assert "best other (random)" in judged["reaches-evidence"]


def test_one_row_per_cell_with_the_figures_of_both_stages(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    table = collect(tmp_path)
    assert len(table) == 9
    row = table[(table["init"] == "sop") & (table["label_fraction"] == 0.5)].iloc[0]
    assert row["test_miou"] == pytest.approx(float(miou(tile_matrices(0.78).sum(0), (0, 1))))
    assert row["best_val_miou"] == pytest.approx(row["test_miou"] + 0.01)
    assert row["epoch_to_threshold"] == 8
    pivot = paper_table(table)
    assert [f for _, _, f in pivot.columns] == [1.0, 0.5, 0.25]


def test_report_files_intervals_definitions_and_the_val_only_note(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    write_cells(tmp_path, {"random": {1.0: (0.6, None)}, "sop": {1.0: (0.65, 3)}}, "loveda", "val")
    out = write_report(tmp_path, layout.results_dir(tmp_path), 0.6, Bootstrap(300), "synthetic")
    results = pd.read_csv(out["results"])
    assert list(results.columns[:10]) == [
        "dataset", "backbone", "init", "label_fraction", "seed",
        "best_val_miou", "epoch_to_threshold", "test_miou", "test_miou_lo", "test_miou_hi",
    ]  # fmt: skip
    assert len(results) == 11
    assert (results["test_miou_lo"] <= results["test_miou"]).all()
    assert (results["test_miou"] <= results["test_miou_hi"]).all()
    assert {"test_iou_forest_lo", "test_iou_field_hi", "test_miou_per_image"} <= set(results)
    assert not results["test_miou_per_image"].isna().any()
    summary = pd.read_csv(out["summary"])
    assert len(summary) == 11
    assert set(summary["seeds"]) == {1}
    report = out["report"].read_text()
    assert out["report_html"].read_text().count("data:image/png;base64,") >= 1
    assert report.startswith("# Subimage Overlap Prediction")
    assert (
        "Data: synthetic. 11 grid cells; seeds [0]; test tiles: landcoverai 24, loveda 24."
        in report
    )
    assert "| sop | 0.7" in report
    assert "Per-image mIoU (secondary)" in report
    assert 'torchgeo\'s "macro" average' in report
    assert "- landcoverai: mIoU over field, forest; excluded: none." in report
    assert "SOP reaches better test mIoU than the best other init: holds." in report
    assert "Evaluated on the val split" in report
    assert "['loveda']" in report
    for name in ("curves_landcoverai_resnet50", "fractions_loveda_resnet50"):
        assert out[name].read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in report
    assert "## LoveDA test-server submissions" in report
    assert (
        "- `submissions/loveda/resnet50-sop-1.0-s0.zip` (`predict@loveda-resnet50-sop-1.0-0`)"
        in report
    )


def test_the_dvc_metrics_file_gives_sops_gain_over_the_best_other_init(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    write_report(tmp_path, layout.results_dir(tmp_path), 0.6, Bootstrap(50))
    written = json.loads(layout.report_metrics_path(tmp_path).read_text())
    table = collect(tmp_path)

    def mean(init: str, fraction: float) -> float:
        rows = table[(table["init"] == init) & (table["label_fraction"] == fraction)]
        return float(rows["test_miou"].mean())

    assert written["cells"] == 9
    assert written["test_miou_mean"] == pytest.approx(table["test_miou"].mean(), abs=1e-4)
    gains = written["sop_gain"]
    assert list(gains) == ["25%", "50%", "100%"]
    for fraction in (1.0, 0.5, 0.25):  # the best other is imagenet at every fraction
        expected = mean("sop", fraction) - mean("imagenet", fraction)
        assert gains[f"{fraction * 100:g}%"] == pytest.approx(expected, abs=1e-4)
    assert gains["25%"] > gains["100%"] > 0


def test_the_gain_at_a_label_fraction_is_averaged_over_datasets(tmp_path: Path) -> None:
    write_cells(tmp_path, {"random": {1.0: (0.70, 5)}, "sop": {1.0: (0.80, 4)}})
    write_cells(tmp_path, {"random": {1.0: (0.70, 5)}, "sop": {1.0: (0.60, 4)}}, "loveda")
    write_report(tmp_path, layout.results_dir(tmp_path), 0.6, Bootstrap(50))
    written = json.loads(layout.report_metrics_path(tmp_path).read_text())
    table = collect(tmp_path)
    sop, random = (
        table[table["init"] == init].set_index("dataset")["test_miou"] for init in ("sop", "random")
    )
    assert written["sop_gain"] == {"100%": pytest.approx(float((sop - random).mean()), abs=1e-4)}
    assert abs(written["sop_gain"]["100%"]) < 0.01  # +0.1 on one dataset, -0.1 on the other


def test_the_submissions_section_lists_each_loveda_cell_and_only_with_one(tmp_path: Path) -> None:
    write_cells(tmp_path, SOP_WINS_MORE_WITH_FEWER_LABELS)
    assert submission_lines(collect(tmp_path)) == []
    write_cells(tmp_path, {"random": {1.0: (0.6, None), 0.25: (0.5, None)}}, "loveda", "val")
    lines = submission_lines(collect(tmp_path))
    assert lines[1] == "## LoveDA test-server submissions"
    paths = [line.split("`")[1] for line in lines if line.startswith("- ")]
    assert paths == [
        layout.submission_path(Path(), Named("loveda", name)).as_posix()
        for name in ("resnet50-random-1.0-s0", "resnet50-random-0.25-s0")
    ]


def test_excluded_classes_are_named_with_their_reason(tmp_path: Path) -> None:
    identity = {"dataset": "deepglobe", "backbone": "b", "init": "sop", "fraction": 1.0, "seed": 0}
    write_cell(tmp_path, identity, tile_matrices(0.8), 3, "test")
    cell = Named("deepglobe", "b-sop-1.0-s0")
    three = np.zeros((TILES, 3, 3), dtype=np.int64)
    three[:, :2, :2] = tile_matrices(0.8)
    classes = ("no-data", "urban", "unknown")
    TileConfusion(three, np.arange(TILES), classes, (1,), 0).write(
        layout.tile_confusion_path(tmp_path, cell)
    )
    out = write_report(tmp_path, tmp_path / "results", 0.6, Bootstrap(100))
    text = out["report"].read_text()
    assert "Data: real: deepglobe." in text
    assert "no-data (the dataset's ignore index" in text
    assert "unknown (outside the dataset's official evaluation" in text


def test_a_missing_or_mismatched_tile_file_is_a_clear_error(tmp_path: Path) -> None:
    write_cells(tmp_path, {"random": {1.0: (0.7, 5)}, "sop": {1.0: (0.8, 4)}})
    table = collect(tmp_path)
    path = layout.tile_confusion_dir(tmp_path) / "landcoverai" / "resnet50-sop-1.0-s0.npz"
    shifted = TileConfusion.read(path)
    TileConfusion(shifted.matrices, shifted.tiles + 1, shifted.classes, (0, 1), None).write(path)
    with pytest.raises(DataError, match="evaluated on other tiles"):
        Evidence.of(table, load_confusions(tmp_path, table), Bootstrap(10))
    path.unlink()
    with pytest.raises(DataError, match="missing per-tile confusion; rerun the evaluate stage"):
        load_confusions(tmp_path, table)


def test_a_metrics_file_without_its_cell_identity_is_a_clear_error(tmp_path: Path) -> None:
    write_cells(tmp_path, {"sop": {1.0: (0.6, 3)}})
    (path,) = (layout.evaluate_metrics_dir(tmp_path) / "landcoverai").glob("*.json")
    path.write_text(json.dumps({"test_miou": 0.6}))
    with pytest.raises(DataError, match="no 'dataset' field"):
        collect(tmp_path)


def test_no_evaluated_cells_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no evaluated cells"):
        collect(tmp_path)


def test_the_html_report_inlines_its_images(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"plot bytes"
    (tmp_path / "curves_landcoverai_resnet50.png").write_bytes(png)
    report = tmp_path / "report.md"
    report.write_text(
        "# Title\n\n| init | mIoU |\n|---|---|\n| sop | 0.7 |\n\n"
        "![curves](curves_landcoverai_resnet50.png)\n\n![gone](missing.png)\n"
    )
    page = html_report(report)
    inlined = "data:image/png;base64," + base64.b64encode(png).decode()
    assert f'<img src="{inlined}" alt="curves"' in page
    assert 'src="curves_landcoverai_resnet50.png"' not in page
    assert '<img src="missing.png"' in page  # nothing to inline: left as it was
    assert "<td>sop</td>" in page  # tables are rendered, not left as pipes
    assert "<h1>Title</h1>" in page
