"""The report: every grid cell's figures in one table, the paper's claims checked against them.

Inputs are the small files the finetune and evaluate stages write (DVC metrics and plots):
``metrics/finetune/<dataset>/<cell>.json``, ``metrics/evaluate/...`` and the curves
``plots/finetune/<dataset>/<cell>.csv``; each metrics file names its cell's dataset, backbone,
init, label fraction and seed. Outputs: ``results/results.csv`` (one row per cell),
``results/report.md`` (the paper-style table and a verdict per claim) and PNG plots.

A claim is judged per (dataset, backbone) comparison and the verdict says how many comparisons
support it; "not measurable" where this run has nothing to compare (no SOP cell, no other init,
or no init reaching the convergence threshold).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipeline import layout
from pipeline.errors import DataError
from pipeline.sweeps import sweep_sections

IDENTITY = ["dataset", "backbone", "init", "label_fraction", "seed"]
FIGURES = ["best_val_miou", "epoch_to_threshold", "test_miou"]
SOP = "sop"
# mIoU differences below this are "equal" (the paper's own gap is 0.009).
EQUAL_WITHIN = 0.005


def collect(root: Path) -> pd.DataFrame:
    """One row per evaluated cell: identity, best val mIoU, epoch to threshold, test figures.

    The identity comes from the metrics files themselves; ``cell`` is the cell's path under
    ``metrics/evaluate`` (``landcoverai/vits14-sop-1.0-s0``), shared by its other files."""
    rows = []
    evaluated = layout.evaluate_metrics_dir(root)
    for path in sorted(evaluated.glob("*/*.json")):
        cell = path.relative_to(evaluated).with_suffix("").as_posix()
        test = json.loads(path.read_text())
        trained_path = layout.finetune_metrics_dir(root) / path.relative_to(evaluated)
        if not trained_path.exists():
            raise DataError(f"{trained_path}: missing for {path}; rerun the finetune stage")
        trained = json.loads(trained_path.read_text())
        try:
            row = {
                "dataset": test["dataset"],
                "backbone": test["backbone"],
                "init": test["init"],
                "label_fraction": float(test["fraction"]),
                "seed": int(test["seed"]),
                "best_val_miou": trained["best_val_miou"],
                "epoch_to_threshold": trained["convergence_epoch"],
                "test_miou": test["test_miou"],
                "evaluated_on": test.get("split", "test"),
            }
        except KeyError as exc:
            raise DataError(
                f"{path}: no {exc} field; written by an older pipeline, rerun its evaluate stage"
            ) from None
        row |= {k: v for k, v in test.items() if k.startswith("test_iou_")}
        row["cell"] = cell
        rows.append(row)
    if not rows:
        raise DataError(f"{evaluated}: no evaluated cells; run the evaluate stages first")
    table = pd.DataFrame(rows)
    return table.sort_values(
        ["dataset", "backbone", "init", "label_fraction", "seed"],
        ascending=[True, True, True, False, True],
    ).reset_index(drop=True)


def curves(root: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation mIoU of every cell in ``table`` (long format)."""
    frames = []
    cells: list[dict[str, Any]] = table[[*IDENTITY, "cell"]].to_dict("records")  # type: ignore[assignment]
    for cell in cells:
        path = layout.finetune_curves_dir(root) / f"{cell.pop('cell')}.csv"
        if not path.exists():
            raise DataError(f"{path}: missing curve; rerun the finetune stage")
        curve = pd.read_csv(path, usecols=["epoch", "val_miou"])
        frames.append(curve.assign(**cell))
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str  # "holds", "partly holds", "does not hold", "not measurable"
    evidence: list[str]


def _verdict(claim: str, outcomes: list[tuple[bool, str]]) -> Verdict:
    if not outcomes:
        return Verdict(claim, "not measurable", ["no comparison possible in this run"])
    held = sum(ok for ok, _ in outcomes)
    verdict = (
        "holds"
        if held == len(outcomes)
        else "does not hold"
        if held == 0
        else f"partly holds ({held} of {len(outcomes)})"
    )
    return Verdict(claim, verdict, [line for _, line in outcomes])


Cell = tuple[str, str, float]  # dataset, backbone, label fraction


def _groups(table: pd.DataFrame) -> Iterable[tuple[Cell, dict[str, tuple[float, float]]]]:
    """(dataset, backbone, fraction) -> {init: (test mIoU, epoch to threshold)}, mean over
    seeds (the slowest seed's epoch; inf for never), where SOP and another init are present."""
    grouped: dict[Cell, dict[str, list[tuple[float, float]]]] = {}
    records: list[dict[str, Any]] = table.to_dict("records")  # type: ignore[assignment]
    for row in records:
        key = (str(row["dataset"]), str(row["backbone"]), float(row["label_fraction"]))
        epoch = row["epoch_to_threshold"]
        reached = math.inf if _missing(epoch) else float(epoch)
        grouped.setdefault(key, {}).setdefault(str(row["init"]), []).append(
            (float(row["test_miou"]), reached)
        )
    for key, inits in sorted(grouped.items()):
        # The pretext ablations (sop-<subimage>-<jitter>) are not part of the paper's claims.
        inits = {k: v for k, v in inits.items() if not k.startswith(f"{SOP}-")}
        if SOP in inits and len(inits) > 1:
            yield (
                key,
                {
                    init: (sum(m for m, _ in runs) / len(runs), max(e for _, e in runs))
                    for init, runs in inits.items()
                },
            )


def check_claims(table: pd.DataFrame) -> list[Verdict]:
    """The paper's three claims, judged on this run's cells (mean over seeds)."""
    faster, better = [], []
    gaps: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (dataset, backbone, fraction), inits in _groups(table):
        where = f"{dataset} {backbone} {fraction:g}"
        sop_miou, sop_epoch = inits.pop(SOP)
        rival = max(inits, key=lambda init: inits[init][0])
        best_other = inits[rival][0]
        better.append(
            (
                sop_miou >= best_other - EQUAL_WITHIN,
                f"{where}: SOP {sop_miou:.3f} vs best other ({rival}) {best_other:.3f}",
            )
        )
        gaps.setdefault((dataset, backbone), []).append((fraction, sop_miou - best_other))
        first_other = min(epoch for _, epoch in inits.values())
        if not (math.isinf(sop_epoch) and math.isinf(first_other)):
            faster.append(
                (
                    sop_epoch < first_other,  # a tie is not faster
                    f"{where}: SOP {_epochs(sop_epoch)} vs fastest other {_epochs(first_other)}",
                )
            )
    widening = []
    for (dataset, backbone), points in gaps.items():
        if len(points) < 2:
            continue
        ordered = sorted(points, reverse=True)  # 1.0 first, then fewer labels
        values = [gap for _, gap in ordered]
        steps = ", ".join(f"{f:g}: {g:+.3f}" for f, g in ordered)
        widening.append(
            (
                all(b >= a - 1e-9 for a, b in itertools.pairwise(values)),
                f"{dataset} {backbone}: SOP minus best other by label fraction {steps}",
            )
        )
    return [
        _verdict("SOP converges faster (fewer epochs to the threshold)", faster),
        _verdict("SOP reaches equal or better test mIoU", better),
        _verdict("The gap widens as labels shrink", widening),
    ]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _epochs(value: float) -> str:
    return "never" if math.isinf(value) else f"epoch {value:g}"


def paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows: inits; columns: dataset x fraction; values: test mIoU (mean over seeds)."""
    pivot = table.pivot_table(
        index="init", columns=["dataset", "backbone", "label_fraction"], values="test_miou"
    )
    return pivot.sort_index(axis=1, ascending=[True, True, False])


def render_markdown(
    table: pd.DataFrame, verdicts: list[Verdict], threshold: float, plots: list[Path]
) -> str:
    pivot = paper_table(table)
    keys: list[Any] = list(pivot.columns)
    columns = [f"{key[0]} {key[1]} {float(key[2]):.0%}" for key in keys]
    lines = [
        "# Subimage Overlap Prediction: results of this run",
        "",
        f"{len(table)} grid cells. Test mIoU of the best-validation checkpoint, mean over seeds "
        f"({sorted(set(table['seed']))}); columns: dataset, backbone, label fraction.",
        "",
        "| init | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for init, values in pivot.iterrows():
        cells = ["-" if math.isnan(v) else f"{v:.3f}" for v in values]
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    val_only = table[table["evaluated_on"] != "test"]
    if len(val_only):
        names = sorted(set(val_only["dataset"]))
        lines += [
            "",
            f"Evaluated on the val split (test labels hidden, as for LoveDA): {names}. That "
            "split also chose the best epoch, so those figures are optimistic.",
        ]
    lines += ["", f"## The paper's claims (convergence threshold {threshold:g})", ""]
    for verdict in verdicts:
        lines.append(f"- **{verdict.claim}: {verdict.verdict}.**")
        lines += [f"  - {line}" for line in verdict.evidence]
    lines += ["", "## Plots", ""]
    lines += [f"![{path.stem}]({path.name})" for path in plots]
    return "\n".join(lines) + "\n"


def plot_curves(curve_table: pd.DataFrame, out_dir: Path, threshold: float) -> list[Path]:
    """Validation mIoU against epoch, a line per init, a panel per fraction; one PNG per
    (dataset, backbone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for (dataset, backbone), group in curve_table.groupby(["dataset", "backbone"]):
        fractions = sorted(set(group["label_fraction"]), reverse=True)
        figure, axes = plt.subplots(
            1, len(fractions), figsize=(4 * len(fractions), 3.4), squeeze=False, sharey=True
        )
        for axis, fraction in zip(axes[0], fractions, strict=True):
            for init, lines in group[group["label_fraction"] == fraction].groupby("init"):
                mean = lines.groupby("epoch")["val_miou"].mean()
                axis.plot(mean.index, mean.to_numpy(), marker=".", label=str(init))
            axis.axhline(threshold, color="grey", linestyle=":", linewidth=1)
            axis.set_title(f"{fraction:.0%} of the labels", fontsize=9)
            axis.set_xlabel("epoch")
        axes[0][0].set_ylabel("validation mIoU")
        axes[0][-1].legend(fontsize=8)
        figure.suptitle(f"{dataset} {backbone}", fontsize=10)
        figure.tight_layout()
        path = out_dir / f"curves_{dataset}_{backbone}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def plot_fractions(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Test mIoU against label fraction, a line per init; one PNG per (dataset, backbone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for (dataset, backbone), group in table.groupby(["dataset", "backbone"]):
        figure, axis = plt.subplots(figsize=(4.5, 3.4))
        for init, lines in group.groupby("init"):
            mean = lines.groupby("label_fraction")["test_miou"].mean().sort_index()
            axis.plot(mean.index, mean.to_numpy(), marker="o", label=str(init))
        axis.set_xlabel("label fraction")
        axis.set_ylabel("test mIoU")
        axis.set_xticks(sorted(set(group["label_fraction"])))
        axis.set_title(f"{dataset} {backbone}", fontsize=10)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = out_dir / f"fractions_{dataset}_{backbone}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def write_report(root: Path, out_dir: Path, threshold: float) -> dict[str, Path]:
    """results.csv, report.md and the plots under ``out_dir``; returns their paths."""
    table = collect(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / layout.RESULTS_TABLE
    ordered = IDENTITY + FIGURES + [c for c in table.columns if c not in IDENTITY + FIGURES]
    table[ordered].to_csv(results, index=False)
    plots = plot_curves(curves(root, table), out_dir, threshold) + plot_fractions(table, out_dir)
    report = out_dir / "report.md"
    sweep_lines, sweep_plots = sweep_sections(table, out_dir)
    markdown = render_markdown(table, check_claims(table), threshold, plots)
    report.write_text(markdown + "".join(f"{line}\n" for line in sweep_lines))
    return {"results": results, "report": report, **{p.stem: p for p in plots + sweep_plots}}


@dataclass(frozen=True)
class PretextCheck:
    """One pretrain run's pretext figure against what the position prior alone scores."""

    run: str
    val_iou: float
    baseline_iou: float

    @property
    def margin(self) -> float:
        return self.val_iou - self.baseline_iou

    def line(self, min_margin: float) -> str:
        verdict = (
            "learned more than the position prior"
            if self.margin >= min_margin
            else f"did not beat the position prior by {min_margin:g}"
        )
        return (
            f"{self.run}: val_iou {self.val_iou:.3f} vs centred-box baseline "
            f"{self.baseline_iou:.3f} ({self.margin:+.3f}): {verdict}"
        )


def pretext_checks(root: Path) -> list[PretextCheck]:
    """Every pretrain run's final mask IoU and baseline, from ``metrics/pretrain/*.json``."""
    folder = layout.pretrain_metrics_dir(root)
    checks = []
    for path in sorted(folder.glob("*.json")):
        figures = json.loads(path.read_text())
        try:
            checks.append(PretextCheck(path.stem, figures["val_iou"], figures["baseline_iou"]))
        except KeyError as exc:
            raise DataError(f"{path}: no {exc.args[0]}; rerun the pretrain stage") from exc
    if not checks:
        raise DataError(f"{folder}: no pretrain metrics; run the pretrain stages first")
    return checks


def plot_confusion(
    matrix: npt.ArrayLike, class_names: tuple[str, ...], path: Path, title: str
) -> None:
    """A row-normalised heatmap (each true class sums to 100%), counts' shares annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    n = len(class_names)
    figure, axes = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(class_names))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            value = float(shares[i, j])
            axes.text(
                j,
                i,
                f"{100 * value:.0f}%",
                ha="center",
                va="center",
                color="white" if value > 0.5 else "black",
                fontsize=8,
            )
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
