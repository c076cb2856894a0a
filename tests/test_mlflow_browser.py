"""The MLflow UI over runs logged as the stages log them, loaded in headless Chromium: the
experiment opens on its runs (not the GenAI view), the runs' names tell the cells apart, the
fine-tuning curves compare in the chart view under the README's filter, a fine-tuning run's
metrics are its curves, and the report's HTML shows its plot inline.

The cells' runs are logged twice: under a grid's parent run (as ``sop repro`` logs them; the UI
folds them under it until one clicks its +, which a headless screenshot cannot) and alone, in
the per-stage experiments (as a plain ``dvc repro`` logs them), where the list and the charts
show them at once.

Slow (a real ``mlflow server`` and a browser); skipped, saying why, without Chromium.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import layout, tracking
from tests import browser

pytestmark = pytest.mark.slow

CELLS = [
    {"dataset": "landcoverai", "backbone": "resnet50", "init": init, "fraction": f, "seed": 0}
    for init in ("random", "sop")
    for f in (0.25, 1.0)
]
FINETUNE_FILTER = "tags.sop.stage = 'finetune'"


def browse(url: str, shot: Path) -> str:
    """The page's DOM after its scripts ran; its screenshot at ``shot``, which shows something."""
    page = browser.render(url, shot)
    browser.assert_not_blank(page.screenshot)
    return page.dom


def text(dom: str) -> str:
    """What the page says: no markup, no scripts or styles, spaces collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>|<!--.*?-->", "", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def pixels_near(shot: Path, colour: tuple[int, int, int], within: int = 40) -> int:
    import numpy as np
    from PIL import Image

    with Image.open(shot) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(colour)) <= within).all(axis=-1).sum())


def log_grid(root: Path) -> dict[str, Any]:
    """A parent run with a finetune and an evaluate run per cell (curves per epoch, summaries
    as the training stages log them) and the report's files as the paper flow logs them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from pipeline.flows.paper import log_outputs
    from pipeline.flows.training import log_summary
    from pipeline.report import html_report

    ids: dict[str, Any] = {}

    def log_cells() -> str:
        """Each cell's finetune and evaluate runs; the experiment of the finetune runs."""
        for cell in CELLS:
            stage = {"root": root, "params": {}, "identity": cell, "experiment_prefix": "sop-demo"}
            with tracking.stage_run("finetune", **stage) as run:
                for epoch in (1, 2, 3):
                    value = 0.1 * epoch + float(cell["fraction"]) / 5
                    mlflow.log_metrics({"val_miou": value, "train_loss": 1 / epoch}, step=epoch)
                log_summary({**cell, "best_val_miou": 0.5, "best_epoch": 3}, {"seconds": 1.0})
                ids["finetune"] = run.info.run_id
            with tracking.stage_run("evaluate", **stage):
                mlflow.log_metric("test_miou", 0.4)
        return str(run.info.experiment_id)

    ids["alone"] = log_cells()  # no parent: the per-stage experiments
    with tracking.parent_run(root, experiment_prefix="sop-demo") as parent:
        log_cells()
    results = layout.results_dir(root)
    results.mkdir(parents=True)
    figure, axes = plt.subplots(figsize=(4, 3))
    axes.plot([1, 2, 3], [0.2, 0.4, 0.5])
    axes.set_title("curves")
    figure.savefig(results / "curves_landcoverai_resnet50.png")
    plt.close(figure)
    (results / "report.md").write_text(
        "# Subimage Overlap Prediction\n\nInline plot check\n\n"
        "![curves](curves_landcoverai_resnet50.png)\n"
    )
    (results / "report.html").write_text(html_report(results / "report.md"))
    client = mlflow.MlflowClient()
    log_outputs(client, parent.info.run_id, root)
    ids["parent"] = parent.info.run_id
    ids["experiment"] = parent.info.experiment_id
    return ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    browser.chromium()  # skips, saying why, without one
    from tests.servers import mlflow_server

    with (
        mlflow_server(tmp_path_factory.mktemp("mlflow-ui")) as uri,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("MLFLOW_TRACKING_URI", uri)
        env.delenv(tracking.PARENT_RUN_ENV, raising=False)
        yield uri, log_grid(tmp_path_factory.mktemp("project"))


def filtered(uri: str, experiment: str, mode: str) -> str:
    """The experiment's runs under the README's filter, as a table or as charts."""
    query = urllib.parse.urlencode(
        {"compareRunsMode": mode, "searchFilter": FINETUNE_FILTER}, quote_via=urllib.parse.quote
    )
    return f"{tracking.ui_url(uri, experiment)}&{query}"


def test_the_experiment_opens_on_its_runs(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    shot = tmp_path / "runs.png"
    page = text(browse(tracking.ui_url(uri, ids["experiment"]), shot))
    assert "Runs" in page
    assert "repro-" in page  # the parent run, its stages' runs folded under it
    assert "9 matching runs" in page
    assert "Token Usage" not in page  # the GenAI overview's traces dashboard


def test_the_finetune_filter_lists_the_cells_by_name(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    shot = tmp_path / "finetune-runs.png"
    page = text(browse(filtered(uri, ids["alone"], "TABLE"), shot))
    for cell in CELLS:
        assert tracking.run_label("finetune", cell) in page
        assert tracking.run_label("evaluate", cell) not in page


def test_the_finetune_filter_compares_the_curves(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    shot = tmp_path / "charts.png"
    page = text(browse(filtered(uri, ids["alone"], "CHART"), shot))
    assert "val_miou" in page
    assert "train_loss" in page
    assert "test_miou" not in page  # the evaluate runs are filtered out


def test_a_finetune_runs_metrics_are_its_curves(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    page = f"experiments/{ids['experiment']}/runs/{ids['finetune']}/model-metrics"
    shot = tmp_path / "metrics.png"
    shown = text(browse(f"{uri}/#/{page}?{tracking.ML_VIEW_QUERY}", shot))
    assert "val_miou" in shown
    assert "best_val_miou" not in shown
    assert "final." not in shown


def test_the_html_report_shows_its_plot_in_the_artifact_viewer(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    page = f"experiments/{ids['experiment']}/runs/{ids['parent']}/artifacts/results/report.html"
    shot = tmp_path / "report.png"
    dom = browse(f"{uri}/#/{page}?{tracking.ML_VIEW_QUERY}", shot)
    assert "results/report.html" in text(dom)
    assert "<iframe" in dom  # the viewer renders HTML in a frame, which --dump-dom leaves out
    # The plot's line (matplotlib's first colour) is drawn: the image shows, not its link.
    assert pixels_near(shot, (31, 119, 180)) > 100


def test_the_finetune_view_lists_a_grids_cells_flat_with_their_identity(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    url = tracking.ui_url(uri, ids["experiment"], "finetune-curves")  # the grid's experiment
    shot = tmp_path / "view.png"
    page = text(browse(url, shot))
    assert "shared view" in page
    for cell in CELLS:  # the parent's runs, not folded under it
        assert tracking.run_label("finetune", cell) in page
        assert tracking.run_label("evaluate", cell) not in page
    for column in ("sop.init", "sop.fraction", "sop.backbone"):
        assert column in page


def test_the_finetune_view_charts_val_miou_alone(
    served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    uri, ids = served
    url = f"{tracking.ui_url(uri, ids['experiment'], 'finetune-curves')}&compareRunsMode=CHART"
    shot = tmp_path / "view-charts.png"
    page = text(browse(url, shot))
    assert "val_miou" in page
    assert "train_loss" not in page  # the view's chart filter
