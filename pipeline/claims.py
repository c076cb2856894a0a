"""The paper's three claims, each comparison judged by the interval of its difference.

A comparison is SOP against the best other init (by mean test mIoU) at one dataset, backbone
and label fraction. Its verdict:

- "holds" when the difference's interval excludes 0 in the claimed direction;
- "does not hold" when it excludes 0 the other way;
- "inconclusive" otherwise.

mIoU differences are paired over seeds where each side has 3 or more, else a tile bootstrap
on the same resamples (:mod:`pipeline.intervals`). Convergence has no tile bootstrap: below 3
paired seeds it is inconclusive, whatever the epochs say. A claim holds when every comparison
holds; the pretext ablations (``sop-<subimage>-<jitter>``) and other swept SOP encoders are not
part of the paper's claims.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipeline.errors import DataError
from pipeline.intervals import (
    MIN_SEEDS,
    Estimate,
    Matrices,
    Term,
    TileConfusion,
    contrast,
    seed_interval,
    tile_resamples,
)

SOP = "sop"
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Evidence:
    """Every cell's per-tile matrices, and one set of tile resamples per dataset."""

    confusions: Mapping[str, TileConfusion]  # by the table's ``cell``
    draws: Mapping[str, npt.NDArray[np.int64]]  # by dataset
    confidence: float

    @classmethod
    def of(
        cls, table: pd.DataFrame, confusions: Mapping[str, TileConfusion], boot: Bootstrap
    ) -> Evidence:
        draws = {}
        for dataset, rows in table.groupby("dataset"):
            cells = list(rows["cell"])
            first = confusions[cells[0]]
            for cell in cells[1:]:
                if not np.array_equal(confusions[cell].tiles, first.tiles):
                    raise DataError(
                        f"{cell}: evaluated on other tiles than {cells[0]}; rerun its evaluate "
                        "stage on the current tile store"
                    )
            draws[str(dataset)] = tile_resamples(len(first.tiles), boot.resamples, boot.seed)
        return cls(confusions, draws, boot.confidence)

    def seeds(self, rows: pd.DataFrame) -> dict[int, Matrices]:
        """seed -> per-tile matrices of ``rows`` (one cell's seeds)."""
        pairs = zip(rows["seed"], rows["cell"], strict=True)
        return {int(seed): self.confusions[cell].matrices for seed, cell in pairs}

    def evaluated(self, dataset: str, table: pd.DataFrame) -> tuple[int, ...]:
        cell = str(table[table["dataset"] == dataset]["cell"].iloc[0])
        return self.confusions[cell].evaluated

    def tiles(self, dataset: str) -> int:
        return int(self.draws[dataset].shape[1])


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str  # holds, does not hold, inconclusive, mixed (...), not measurable
    evidence: list[str]


def direction(estimate: Estimate) -> str:
    """The verdict of a difference whose claimed direction is positive."""
    if estimate.low > 0:
        return HOLDS
    if estimate.high < 0:
        return FAILS
    return INCONCLUSIVE


def summarise(claim: str, outcomes: list[tuple[str, str]]) -> Verdict:
    """A claim's verdict from its comparisons' (verdict, evidence line)."""
    if not outcomes:
        return Verdict(claim, "not measurable", ["no comparison possible in this run"])
    counts = Counter(verdict for verdict, _ in outcomes)
    if len(counts) == 1:
        verdict = outcomes[0][0]
    else:
        parts = ", ".join(f"{v} in {counts[v]}" for v in (HOLDS, FAILS, INCONCLUSIVE) if counts[v])
        verdict = f"mixed: {parts} of {len(outcomes)}"
    return Verdict(claim, verdict, [f"{line}: {v}" for v, line in outcomes])


Key = tuple[str, str, float]  # dataset, backbone, label fraction


def comparisons(table: pd.DataFrame) -> Iterator[tuple[Key, pd.DataFrame, pd.DataFrame]]:
    """(key, SOP rows, other inits' rows) wherever SOP and another init share a key."""
    paper = table[(table["init"] == SOP) | ~table["init"].str.startswith(SOP)]
    for _, rows in paper.groupby(["dataset", "backbone", "label_fraction"], sort=True):
        sop, others = rows[rows["init"] == SOP], rows[rows["init"] != SOP]
        if len(sop) and len(others):
            first = rows.iloc[0]
            key = (str(first["dataset"]), str(first["backbone"]), float(first["label_fraction"]))
            yield key, sop, others


def best_other(others: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The other init with the highest mean test mIoU, and its rows."""
    rival = str(others.groupby("init")["test_miou"].mean().idxmax())
    return rival, others[others["init"] == rival]


def sop_gains(table: pd.DataFrame) -> dict[Key, float]:
    """SOP's mean test mIoU minus the best other init's, per dataset, backbone and fraction."""
    gains = {}
    for key, sop, others in comparisons(table):
        _, rival_rows = best_other(others)
        gains[key] = float(sop["test_miou"].mean() - rival_rows["test_miou"].mean())
    return gains


def better(table: pd.DataFrame, evidence: Evidence) -> Verdict:
    outcomes = []
    for (dataset, backbone, fraction), sop, others in comparisons(table):
        rival, rival_rows = best_other(others)
        terms: list[Term] = [(1.0, evidence.seeds(sop)), (-1.0, evidence.seeds(rival_rows))]
        estimate = _contrast(terms, dataset, table, evidence)
        line = (
            f"{dataset} {backbone} {fraction:g}: SOP {sop['test_miou'].mean():.3f} vs best other "
            f"({rival}) {rival_rows['test_miou'].mean():.3f}, difference {estimate.text()} "
            f"({estimate.basis})"
        )
        outcomes.append((direction(estimate), line))
    return summarise("SOP reaches better test mIoU than the best other init", outcomes)


def widening(table: pd.DataFrame, evidence: Evidence) -> Verdict:
    """The gap at the fewest labels minus the gap at the most, per (dataset, backbone)."""
    found: dict[tuple[str, str], dict[float, list[Term]]] = {}
    for (dataset, backbone, fraction), sop, others in comparisons(table):
        _, rival_rows = best_other(others)
        terms: list[Term] = [(1.0, evidence.seeds(sop)), (-1.0, evidence.seeds(rival_rows))]
        found.setdefault((dataset, backbone), {})[fraction] = terms
    outcomes = []
    for (dataset, backbone), by_fraction in sorted(found.items()):
        if len(by_fraction) < 2:
            continue
        few, most = min(by_fraction), max(by_fraction)
        flipped = [(-w, seeds) for w, seeds in by_fraction[most]]
        estimate = _contrast(by_fraction[few] + flipped, dataset, table, evidence)
        gaps = ", ".join(
            f"{f:g}: {_contrast(by_fraction[f], dataset, table, evidence).value:+.3f}"
            for f in sorted(by_fraction, reverse=True)
        )
        line = (
            f"{dataset} {backbone}: SOP minus best other by label fraction {gaps}; gap at "
            f"{few:g} minus gap at {most:g} {estimate.text()} ({estimate.basis})"
        )
        outcomes.append((direction(estimate), line))
    return summarise("The gap widens as labels shrink", outcomes)


def _contrast(terms: list[Term], dataset: str, table: pd.DataFrame, evidence: Evidence) -> Estimate:
    evaluated = evidence.evaluated(dataset, table)
    return contrast(terms, evaluated, evidence.draws[dataset], evidence.confidence)


def faster(table: pd.DataFrame, confidence: float, never: float) -> Verdict:
    """Epochs to the threshold, the fastest other init's minus SOP's, paired over seeds;
    ``never`` stands for a seed that did not reach the threshold."""
    outcomes = []
    for (dataset, backbone, fraction), sop, others in comparisons(table):
        epochs = others.assign(epoch=_epochs(others, never)).groupby("init")["epoch"]
        rival = str(epochs.mean().idxmin())
        rival_rows = others[others["init"] == rival]
        mine = dict(zip(sop["seed"], _epochs(sop, never), strict=True))
        theirs = dict(zip(rival_rows["seed"], _epochs(rival_rows, never), strict=True))
        if all(v == never for v in [*mine.values(), *theirs.values()]):
            continue  # nobody reached the threshold: nothing to compare
        seeds = sorted(set(mine) & set(theirs))
        where = (
            f"{dataset} {backbone} {fraction:g}: SOP {_said(mine, never)} vs fastest other "
            f"({rival}) {_said(theirs, never)}"
        )
        if len(seeds) < MIN_SEEDS:
            outcomes.append(
                (INCONCLUSIVE, f"{where}; {len(seeds)} paired seed(s), {MIN_SEEDS} needed")
            )
            continue
        estimate = seed_interval(
            [theirs[s] - mine[s] for s in seeds], confidence, f"paired over {len(seeds)} seeds"
        )
        outcomes.append(
            (direction(estimate), f"{where}, epochs saved {estimate.text(1)} ({estimate.basis})")
        )
    return summarise("SOP converges faster (fewer epochs to the threshold)", outcomes)


def _epochs(rows: pd.DataFrame, never: float) -> list[float]:
    return [never if _missing(e) else float(e) for e in rows["epoch_to_threshold"]]


def _said(epochs: Mapping[int, float], never: float) -> str:
    """Each seed's epoch to the threshold, in seed order: "epoch 5/epoch 6/never"."""
    return "/".join("never" if e == never else f"epoch {e:g}" for _, e in sorted(epochs.items()))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_claims(table: pd.DataFrame, evidence: Evidence, never: float) -> list[Verdict]:
    """The paper's three claims on this run's cells."""
    return [
        faster(table, evidence.confidence, never),
        better(table, evidence),
        widening(table, evidence),
    ]
