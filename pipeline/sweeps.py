"""The report's sweep sections: the paper's open questions, each from the cells of its inits.

- Pretraining data scale (``pretrain.image_fractions``): test mIoU against the share of the
  pretraining images, per dataset, backbone and label fraction; ``sop-img<share>`` cells are
  the shares below 1, the plain ``sop`` cell is the 1.0 point.
- Cross-dataset transfer (``pretrain.datasets``): test mIoU of pretraining dataset x fine-tuning
  dataset, per backbone and label fraction; ``sop-<dataset>`` cells are the rows of the other
  datasets, the plain ``sop`` cell the row of ``pretrain.dataset``.

A section appears only where its sweep has a cell. Values are means over seeds. Init names are
read through :func:`pipeline.zoo.parse_sop`, the one parser of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.zoo import base_init, parse_sop

# The plain sop's pretraining dataset where the caller does not name it (the cells' files do
# not record it; the report stage passes pretrain.dataset).
MAIN_DATASET = "pretrain.dataset"
PERCENT = "{:.0%}".format


def _sop_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The SOP cells of the main pretext variant, with what their init varies:
    ``image_fraction`` (1.0: every image) and ``pretrained_on`` (None: pretrain.dataset)."""
    rows = []
    records: list[dict[str, Any]] = table.to_dict("records")  # type: ignore[assignment]
    for row in records:
        init = str(row["init"])
        if base_init(init) != "sop":
            continue
        parsed = parse_sop(init)
        if parsed.variant is not None:
            continue  # a pretext ablation: neither sweep's
        rows.append(
            {
                "dataset": row["dataset"],
                "backbone": row["backbone"],
                "label_fraction": float(row["label_fraction"]),
                "image_fraction": parsed.image_fraction or 1.0,
                "pretrained_on": parsed.dataset,
                "test_miou": float(row["test_miou"]),
            }
        )
    columns = ["dataset", "backbone", "label_fraction", "image_fraction", "pretrained_on"]
    return pd.DataFrame(rows, columns=[*columns, "test_miou"])


def images_table(table: pd.DataFrame) -> pd.DataFrame:
    """Index (dataset, backbone, label fraction), one column per share of the pretraining
    images (ascending, 1.0 the plain sop): mean test mIoU; only rows with a share below 1."""
    cells = _sop_cells(table)
    cells = cells[cells["pretrained_on"].isna()]
    index = ["dataset", "backbone", "label_fraction"]
    if not (cells["image_fraction"] < 1.0).any():
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=index))
    pivot = cells.pivot_table(index=index, columns="image_fraction", values="test_miou")
    swept = pivot[[c for c in pivot.columns if float(c) < 1.0]].notna().any(axis=1)
    return pivot[swept].sort_index(axis=1).sort_index(ascending=[True, True, False])


def transfer_table(table: pd.DataFrame, main_dataset: str = MAIN_DATASET) -> pd.DataFrame:
    """Index (backbone, label fraction, pretraining dataset), one column per fine-tuning
    dataset: mean test mIoU; only (backbone, label fraction) pairs with another pretraining
    dataset than the main one."""
    cells = _sop_cells(table)
    cells = cells[cells["image_fraction"] == 1.0]
    index = ["backbone", "label_fraction", "pretrained_on"]
    if not cells["pretrained_on"].notna().any():
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=index))
    cells = cells.assign(pretrained_on=cells["pretrained_on"].fillna(main_dataset))
    pivot = cells.pivot_table(index=index, columns="dataset", values="test_miou")
    swept = {key[:2] for key in pivot.index if key[2] != main_dataset}
    keep = [key[:2] in swept for key in pivot.index]
    return pivot[keep].sort_index(ascending=[True, False, True])


def _value(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _markdown(frame: pd.DataFrame, labels: list[str], header: list[str]) -> list[str]:
    """A pivot as a markdown table: its index levels, then its columns."""
    lines = [
        "| " + " | ".join(labels + header) + " |",
        "|" + " --- |" * (len(labels) + len(header)),
    ]
    for key, values in frame.iterrows():
        keys = list(key) if isinstance(key, tuple) else [key]
        shown = [PERCENT(k) if isinstance(k, float) else str(k) for k in keys]
        lines.append("| " + " | ".join(shown + [_value(float(v)) for v in values]) + " |")
    return lines


def images_section(table: pd.DataFrame, out_dir: Path) -> tuple[list[str], list[Path]]:
    """The data-scale sweep's markdown and one plot per (dataset, backbone)."""
    pivot = images_table(table)
    if pivot.empty:
        return [], []
    lines = [
        "## Pretraining data scale",
        "",
        "Test mIoU (mean over seeds) against the share of the pretraining images "
        "(`pretrain.image_fractions`: nested seeded subsets; 100% is the plain `sop`).",
        "",
        *_markdown(pivot, ["dataset", "backbone", "labels"], [PERCENT(c) for c in pivot.columns]),
    ]
    plots = []
    for (dataset, backbone), group in pivot.groupby(level=["dataset", "backbone"]):
        path = out_dir / f"sweep_images_{dataset}_{backbone}.png"
        _plot(path, f"{dataset} {backbone}", _images_axes, group)
        plots.append(path)
    return lines, plots


def transfer_section(
    table: pd.DataFrame, out_dir: Path, main_dataset: str = MAIN_DATASET
) -> tuple[list[str], list[Path]]:
    """The transfer sweep's markdown and one heatmap per (backbone, label fraction)."""
    pivot = transfer_table(table, main_dataset)
    if pivot.empty:
        return [], []
    lines = [
        "## Cross-dataset transfer",
        "",
        "Test mIoU (mean over seeds) of the SOP encoder pretrained on a dataset (rows; "
        f"`pretrain.datasets`, and `{main_dataset}` for the plain `sop`) and fine-tuned on "
        "each (columns).",
        "",
        *_markdown(
            pivot, ["backbone", "labels", "pretrained on"], [f"on {c}" for c in pivot.columns]
        ),
    ]
    plots = []
    for (backbone, fraction), group in pivot.groupby(level=["backbone", "label_fraction"]):
        path = out_dir / f"sweep_transfer_{backbone}_{fraction:g}.png"
        title = f"{backbone}, {PERCENT(fraction)} of the labels"
        _plot(path, title, _transfer_axes, group)
        plots.append(path)
    return lines, plots


def sweep_sections(
    table: pd.DataFrame, out_dir: Path, main_dataset: str = MAIN_DATASET
) -> tuple[list[str], list[Path]]:
    """Both sweeps' markdown lines (each section preceded by a blank line) and PNG plots,
    written under ``out_dir``; nothing for a sweep without cells."""
    lines: list[str] = []
    plots: list[Path] = []
    for section_lines, section_plots in (
        images_section(table, out_dir),
        transfer_section(table, out_dir, main_dataset),
    ):
        if section_lines:
            lines += ["", *section_lines]
        plots += section_plots
    if plots:
        lines += ["", *[f"![{path.stem}]({path.name})" for path in plots]]
    return lines, plots


def _plot(
    path: Path, title: str, draw: Callable[[Any, pd.DataFrame], None], group: pd.DataFrame
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 3.4))
    draw(axis, group)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _images_axes(axis: Any, group: pd.DataFrame) -> None:
    """A line per label fraction: test mIoU against the share of the pretraining images."""
    fractions = group.index.get_level_values("label_fraction")
    for position, fraction in enumerate(fractions):
        points = group.iloc[position].dropna()
        axis.plot(points.index, points.to_numpy(), marker="o", label=f"{fraction:.0%} labels")
    axis.set_xlabel("share of the pretraining images")
    axis.set_ylabel("test mIoU")
    axis.set_xticks(list(group.columns))
    axis.legend(fontsize=8)


def _transfer_axes(axis: Any, group: pd.DataFrame) -> None:
    """Pretraining dataset (rows) x fine-tuning dataset (columns), values annotated."""
    values = group.to_numpy(dtype=float)
    axis.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0)
    rows = list(group.index.get_level_values("pretrained_on"))
    axis.set_xticks(range(len(group.columns)), labels=[str(c) for c in group.columns])
    axis.set_yticks(range(len(rows)), labels=rows)
    axis.set_xlabel("fine-tuned on")
    axis.set_ylabel("pretrained on")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            axis.text(j, i, _value(values[i, j]), ha="center", va="center", fontsize=8)
