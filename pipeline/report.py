"""The report: every grid cell's figures in one table, the paper's claims checked against them.

Inputs are the small files the finetune and evaluate stages write (DVC metrics and plots):
``metrics/finetune/<dataset>/<cell>.json``, ``metrics/evaluate/...``, the curves
``plots/finetune/<dataset>/<cell>.csv`` and the per-tile confusion matrices
``reports/tiles/<dataset>/<cell>.npz``; each metrics file names its cell's dataset, backbone,
init, label fraction and seed. Outputs: ``results/results.csv`` (one row per cell, each figure
with its interval), ``results/summary.csv`` (one row per cell over its seeds),
``results/report.md`` (the paper-style table, the metrics' definitions and a verdict per claim
with its uncertainty: :mod:`pipeline.claims`), PNG plots, and ``results/report.html``: the same
report as one page with its plots inlined, which MLflow's artifact viewer renders (it shows a
markdown file's image links as text).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipeline import layout
from pipeline.claims import Bootstrap, Evidence, Verdict, check_claims, sop_gains
from pipeline.errors import DataError
from pipeline.intervals import MIN_SEEDS, TileConfusion, cell_interval, class_intervals
from pipeline.sweeps import MAIN_DATASET, sweep_sections
from pipeline.zoo import metric_name

IDENTITY = ["dataset", "backbone", "init", "label_fraction", "seed"]
FIGURES = ["best_val_miou", "epoch_to_threshold", "test_miou"]
CELL = ["dataset", "backbone", "init", "label_fraction"]  # a grid cell, over its seeds


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
                "test_miou_per_image": test.get("test_miou_per_image", math.nan),
                "test_tiles": test.get("tiles"),
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


def paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows: inits; columns: dataset x fraction; values: test mIoU (mean over seeds)."""
    pivot = table.pivot_table(
        index="init", columns=["dataset", "backbone", "label_fraction"], values="test_miou"
    )
    return pivot.sort_index(axis=1, ascending=[True, True, False])


def load_confusions(root: Path, table: pd.DataFrame) -> dict[str, TileConfusion]:
    """Every cell's per-tile confusion matrices, by the table's ``cell``."""
    folder = layout.tile_confusion_dir(root)
    return {cell: TileConfusion.read(folder / f"{cell}.npz") for cell in table["cell"]}


def with_intervals(table: pd.DataFrame, evidence: Evidence) -> pd.DataFrame:
    """``table`` with each test figure's tile-bootstrap interval (``<figure>_lo``/``_hi``)."""
    extra: list[dict[str, float]] = []
    for cell, dataset, seed in zip(table["cell"], table["dataset"], table["seed"], strict=True):
        confusion, draws = evidence.confusions[cell], evidence.draws[dataset]
        low, high = cell_interval(
            {seed: confusion.matrices}, confusion.evaluated, draws, evidence.confidence
        )
        row = {"test_miou_lo": low, "test_miou_hi": high}
        for name, (c_low, c_high) in zip(
            confusion.classes,
            class_intervals(confusion.matrices, draws, evidence.confidence),
            strict=True,
        ):
            column = f"test_iou_{metric_name(name)}"
            row |= {f"{column}_lo": c_low, f"{column}_hi": c_high}
        extra.append(row)
    return pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)


def summary(table: pd.DataFrame, evidence: Evidence) -> pd.DataFrame:
    """One row per cell over its seeds: mean and sd of test mIoU, the seed-mean's interval."""
    rows = []
    for key, cells in table.groupby(CELL, sort=False):
        dataset = str(key[0])
        evaluated = evidence.evaluated(dataset, table)
        low, high = cell_interval(
            evidence.seeds(cells), evaluated, evidence.draws[dataset], evidence.confidence
        )
        scores = cells["test_miou"].astype(float)
        rows.append(
            dict(zip(CELL, key, strict=True))
            | {
                "seeds": len(cells),
                "test_miou_mean": scores.mean(),
                "test_miou_sd": scores.std(ddof=1) if len(cells) > 1 else math.nan,
                "test_miou_lo": low,
                "test_miou_hi": high,
                "test_miou_per_image": cells["test_miou_per_image"].astype(float).mean(),
                "test_tiles": evidence.tiles(dataset),
            }
        )
    return pd.DataFrame(rows)


def _figure_text(row: pd.Series) -> str:
    spread = "" if math.isnan(row["test_miou_sd"]) else f" ± {row['test_miou_sd']:.3f}"
    interval = f"[{row['test_miou_lo']:.2f}, {row['test_miou_hi']:.2f}]"
    return f"{row['test_miou_mean']:.3f}{spread} {interval}"


def markdown_table(cells: pd.DataFrame, text: Any) -> list[str]:
    """Rows: inits; columns: dataset x backbone x label fraction; ``text(row)`` per cell."""
    frame = cells.assign(text=cells.apply(text, axis=1))
    pivot = frame.pivot(index="init", columns=CELL[:2] + CELL[3:], values="text")
    pivot = pivot.sort_index(axis=1, ascending=[True, True, False])
    keys: list[Any] = list(pivot.columns)
    columns = [f"{key[0]} {key[1]} {float(key[2]):.0%}" for key in keys]
    lines = [
        "| init | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for init, values in pivot.iterrows():
        lines.append(f"| {init} | " + " | ".join("-" if v != v else str(v) for v in values) + " |")
    return lines


def metric_definitions(table: pd.DataFrame, evidence: Evidence, boot: Bootstrap) -> list[str]:
    lines = [
        "## Metrics",
        "",
        "- **mIoU** is the mean over the evaluated classes of each class's IoU from the "
        "dataset-level confusion matrix: every test tile's pixels are summed first (torchgeo's "
        '"macro" average). A class absent from both truth and prediction is left out.',
        "- **Per-image mIoU** (secondary) is each test tile's own mIoU over the classes present "
        "in it, averaged over tiles.",
        f"- **Intervals** are {boot.confidence:.0%} percentile intervals from {boot.resamples} "
        f"bootstrap resamples of whole test tiles (seed {boot.seed}), the confusion matrix "
        "re-summed per resample. Differences use the same resamples for both sides (paired by "
        f"tile), or Student's t over paired seeds where each side has {MIN_SEEDS} or more.",
        '- **Verdicts**: "holds" when the interval of the difference excludes 0 in the claimed '
        'direction, "does not hold" when it excludes 0 the other way, "inconclusive" otherwise.',
    ]
    for dataset in sorted(set(table["dataset"])):
        cell = str(table[table["dataset"] == dataset]["cell"].iloc[0])
        lines.append(f"- {dataset}: " + _classes_line(evidence.confusions[cell]))
    return lines


def _classes_line(confusion: TileConfusion) -> str:
    evaluated = ", ".join(confusion.classes[c] for c in confusion.evaluated)
    excluded = []
    for index, name in enumerate(confusion.classes):
        if index == confusion.ignore_index:
            excluded.append(f"{name} (the dataset's ignore index: its pixels are never counted)")
        elif index not in confusion.evaluated:
            excluded.append(
                f"{name} (outside the dataset's official evaluation: in the matrix, not the mean)"
            )
    return f"mIoU over {evaluated}; excluded: {'; '.join(excluded) or 'none'}."


def render_markdown(
    table: pd.DataFrame,
    evidence: Evidence,
    verdicts: list[Verdict],
    threshold: float,
    plots: list[Path],
    boot: Bootstrap,
    data: str = "",
) -> str:
    cells = summary(table, evidence)
    datasets = sorted(set(table["dataset"]))
    tiles = ", ".join(f"{d} {evidence.tiles(d)}" for d in datasets)
    seeds = sorted(set(table["seed"]))
    lines = [
        "# Subimage Overlap Prediction: results of this run",
        "",
        f"Data: {data or 'real: ' + ', '.join(datasets)}. {len(table)} grid cells; seeds {seeds}; "
        f"test tiles: {tiles}.",
        "",
        "## Test mIoU",
        "",
        f"Test mIoU of each cell's best-validation checkpoint [{boot.confidence:.0%} interval]; "
        "with several seeds, mean ± sd over seeds. Columns: dataset, backbone, label fraction.",
        "",
        *markdown_table(cells, _figure_text),
        "",
        "Per-image mIoU (secondary):",
        "",
        *markdown_table(cells, lambda row: f"{row['test_miou_per_image']:.3f}"),
    ]
    val_only = table[table["evaluated_on"] != "test"]
    if len(val_only):
        names = sorted(set(val_only["dataset"]))
        lines += [
            "",
            f"Evaluated on the val split (test labels hidden, as for LoveDA): {names}. That "
            "split also chose the best epoch, so those figures are optimistic.",
        ]
    lines += ["", *metric_definitions(table, evidence, boot)]
    lines += ["", f"## The paper's claims (convergence threshold {threshold:g})", ""]
    for verdict in verdicts:
        lines.append(f"- **{verdict.claim}: {verdict.verdict}.**")
        lines += [f"  - {line}" for line in verdict.evidence]
    lines += ["", "## Plots", ""]
    lines += [f"![{path.stem}]({path.name})" for path in plots]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Cell:
    dataset: str
    name: str


SUBMITTED = "loveda"  # the dataset whose test server takes the predict stage's zips


def submission_lines(table: pd.DataFrame) -> list[str]:
    """Where each LoveDA cell's test-server zip lies (its predict stage's output, named from the
    layout; the report does not read it). None without LoveDA cells."""
    rows = table[table["dataset"] == SUBMITTED]
    if not len(rows):
        return []
    lines = [
        "",
        "## LoveDA test-server submissions",
        "",
        "LoveDA's test labels are hidden (its figures above are on val). Each cell's predictions "
        "on the Test images, zipped as LoveDA's test server takes them, are its predict stage's "
        "output, under the pipeline root:",
        "",
    ]
    for row in rows.itertuples():
        dataset, name = str(row.cell).split("/", 1)
        path = layout.submission_path(Path(), _Cell(dataset, name)).as_posix()
        stage = f"predict@{dataset}-{row.backbone}-{row.init}-{row.label_fraction}-{row.seed}"
        lines.append(f"- `{path}` (`{stage}`)")
    return lines


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


def result_columns(table: pd.DataFrame) -> list[str]:
    """Identity, figures, each test figure followed by its interval, the rest."""
    first = IDENTITY + FIGURES[:-1]
    for column in table.columns:
        if column.startswith("test_") and not column.endswith(("_lo", "_hi")):
            first += [column] + [
                f"{column}{end}" for end in ("_lo", "_hi") if f"{column}{end}" in table
            ]
    return first + [c for c in table.columns if c not in first]


def headline_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """The report's DVC metrics, a few short columns for ``dvc exp show``: the cell count, the
    mean test mIoU, and by label percentage (``sop_gain.25%``) SOP's gain over the best other
    init, averaged over the datasets and backbones compared (report.md has each)."""
    by_fraction: dict[float, list[float]] = {}
    for (_, _, fraction), gain in sop_gains(table).items():
        by_fraction.setdefault(fraction, []).append(gain)
    gains = {f"{f * 100:g}%": round(float(np.mean(g)), 4) for f, g in sorted(by_fraction.items())}
    mean = round(float(table["test_miou"].mean()), 4) if len(table) else None
    return {"cells": len(table), "test_miou_mean": mean, "sop_gain": gains}


def write_report(
    root: Path,
    out_dir: Path,
    threshold: float,
    boot: Bootstrap | None = None,
    data: str = "",
    main_dataset: str = MAIN_DATASET,
) -> dict[str, Path]:
    """results.csv, summary.csv, report.md and the plots under ``out_dir``; their paths.
    ``main_dataset``: where the plain ``sop`` init pretrained (the transfer matrix's row)."""
    boot = boot or Bootstrap()
    table = collect(root)
    evidence = Evidence.of(table, load_confusions(root, table), boot)
    table = with_intervals(table, evidence)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / layout.RESULTS_TABLE
    table[result_columns(table)].to_csv(results, index=False)
    summary_file = out_dir / layout.SUMMARY_TABLE
    summary(table, evidence).to_csv(summary_file, index=False)
    curve_table = curves(root, table)
    plots = plot_curves(curve_table, out_dir, threshold) + plot_fractions(table, out_dir)
    never = float(curve_table["epoch"].max()) + 1
    verdicts = check_claims(table, evidence, never)
    report = out_dir / "report.md"
    sweep_lines, sweep_plots = sweep_sections(table, out_dir, main_dataset)
    markdown = render_markdown(table, evidence, verdicts, threshold, plots, boot, data)
    extra = sweep_lines + submission_lines(table)
    report.write_text(markdown + "".join(f"{line}\n" for line in extra))
    page = report.with_suffix(".html")
    page.write_text(html_report(report))
    headline = layout.report_metrics_path(root)
    headline.parent.mkdir(parents=True, exist_ok=True)
    headline.write_text(json.dumps(headline_metrics(table), indent=2) + "\n")
    paths = {"results": results, "summary": summary_file, "report": report, "report_html": page}
    paths["metrics"] = headline
    return paths | {p.stem: p for p in plots + sweep_plots}


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .5em}"
    "img{max-width:100%}code{background:#f4f4f4}"
)


def html_report(markdown_file: Path) -> str:
    """``markdown_file`` as one HTML page, each local image it shows inlined as a data URI (the
    page stands alone: MLflow's artifact viewer loads no neighbouring file)."""
    import base64
    import html
    import mimetypes
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_file.read_text())

    def inline(match: re.Match[str]) -> str:
        source = html.unescape(match.group(2))
        path = markdown_file.parent / source
        if "://" in source or source.startswith("data:") or not path.is_file():
            return match.group(0)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}"data:{kind};base64,{data}"'

    body = re.sub(r'(<img\b[^>]*?\bsrc=)"([^"]*)"', inline, body)
    title = html.escape(markdown_file.stem)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


@dataclass(frozen=True)
class PretextCheck:
    """One pretrain run's pretext figure against what the position prior alone scores."""

    run: str
    val_iou: float
    baseline_iou: float

    @property
    def margin(self) -> float:
        return self.val_iou - self.baseline_iou

    def passes(self, min_margin: float) -> bool:
        # The figures are rounded in the file: a gap equal to the margin on paper passes.
        return self.margin >= min_margin - 1e-9

    def line(self, min_margin: float) -> str:
        verdict = (
            "learned more than the position prior"
            if self.passes(min_margin)
            else f"did not beat the position prior by {min_margin:g}"
        )
        return (
            f"{self.run}: val_iou {self.val_iou:.3f} vs centred-box baseline "
            f"{self.baseline_iou:.3f} ({self.margin:+.3f}): {verdict}"
        )


def pretext_check(path: Path) -> PretextCheck:
    """One pretrain run's final mask IoU and baseline, from its ``metrics/pretrain`` file."""
    figures = json.loads(path.read_text())
    try:
        return PretextCheck(path.stem, figures["val_iou"], figures["baseline_iou"])
    except KeyError as exc:
        raise DataError(f"{path}: no {exc.args[0]}; rerun the pretrain stage") from exc


def pretext_checks(root: Path) -> list[PretextCheck]:
    """Every pretrain run's final mask IoU and baseline, from ``metrics/pretrain/*.json``."""
    folder = layout.pretrain_metrics_dir(root)
    checks = [pretext_check(path) for path in sorted(folder.glob("*.json"))]
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
