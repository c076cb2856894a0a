"""The results as a user sees them, in headless Chromium (slow tier; skipped, saying why, where
no Chromium exists): DVC's plots page from `sop plots` renders offline, and the MLflow UI shows
a fine-tuning run and its val_miou curve. Screenshots are kept under the test's tmp_path."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import browser
from tests.servers import BIN, _wait_healthy, free_port, stop_group

REPO = Path(__file__).resolve().parents[1]
MODELS = ["resnet_demo-random", "resnet_demo-sop", "vit_tiny_demo-random", "vit_tiny_demo-sop"]
FRACTIONS = [1.0, 0.5, 0.25]
NETWORK = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*(?:src|href)\s*=\s*["']?(?:https?:)?//"""
)


def demo_project(folder: Path) -> Path:
    """A copy of the demo's DVC project (definitions, templates) with plot files written here:
    per-epoch curves for every cell of the demo's grid, and results.csv."""
    folder.mkdir()
    shutil.copy(REPO / "demo" / "dvc.yaml", folder / "dvc.yaml")
    shutil.copy(REPO / "demo" / "params.yaml", folder / "params.yaml")
    shutil.copytree(REPO / "demo" / ".dvc", folder / ".dvc", ignore=shutil.ignore_patterns("tmp"))
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    curves = folder / "plots" / "finetune" / "landcoverai"
    curves.mkdir(parents=True)
    rows = ["dataset,backbone,init,label_fraction,seed,best_val_miou,epoch_to_threshold,test_miou"]
    for model, fraction in itertools.product(MODELS, FRACTIONS):
        backbone, init = model.split("-")
        lift = 0.1 if init == "sop" else 0.0
        points = "".join(
            f"{e},{1 / (e + 1):.3f},{0.2 + lift + 0.1 * e * fraction:.3f}\n" for e in range(4)
        )
        (curves / f"{model}-{fraction}-s0.csv").write_text("epoch,train_loss,val_miou\n" + points)
        test = 0.3 + 0.4 * fraction + (0.05 if init == "sop" else 0.0)
        rows.append(f"landcoverai,{backbone},{init},{fraction},0,{test:.3f},2,{test:.3f}")
    (folder / "results").mkdir()
    (folder / "results" / "results.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_offline_page_loads_nothing_from_the_network() -> None:
    pytest.importorskip("vl_convert", reason="vl-convert-python missing: `make sync`")
    from pipeline import views

    page = views.offline_page()
    assert "{plot_divs}" in page
    assert "{scripts}" not in page  # where DVC would put its CDN script tags
    assert not NETWORK.search(page)
    assert "vegaEmbed" in page


def test_the_network_check_sees_a_cdn_script() -> None:
    assert NETWORK.search('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>')
    assert not NETWORK.search('<script type="text/javascript">var a = "https://x";</script>')


@pytest.mark.slow
def test_dvc_plots_render_offline(tmp_path: Path) -> None:
    browser.chromium()
    pytest.importorskip("vl_convert", reason="vl-convert-python missing: `make sync`")
    project = demo_project(tmp_path / "demo")
    done = subprocess.run(
        [str(BIN / "sop"), "plots", "--params", str(project / "params.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    index = project / "dvc_plots" / "index.html"
    assert done.stdout.strip() == index.as_uri()
    assert not NETWORK.search(index.read_text())

    page = browser.render(index, tmp_path / "dvc_plots.png")
    browser.assert_not_blank(page.screenshot)
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", page.dom)  # the charts' SVG text
    assert "test mIoU by label fraction (colour = init, shape = backbone)" in texts
    assert "val_miou, landcoverai resnet_demo-sop 0.25 s0" in texts
    # A chart per cell, and one per backbone with its cells' curves coloured by init
    assert texts.count("val_miou") == len(MODELS) * len(FRACTIONS) + 2  # each chart's y axis
    for backbone in ("resnet_demo", "vit_tiny_demo"):
        assert f"val_miou, landcoverai {backbone} (colour = init, dash = label fraction)" in texts
    assert texts.count("init") == 3  # the legends' titles: colour by init
    assert {"random", "sop"} <= set(texts)
    assert "1.0" in texts  # the fraction axis runs past 1.0 (to 1.05, a tick it does not label)
    assert "1.05" not in texts


def log_finetune_run(store: Path) -> tuple[str, str]:
    """One fine-tuning run with a val_miou curve in an MLflow store under ``store``; its
    experiment id and run name. In a subprocess: MLflow's globals stay out of this one."""
    name = "finetune resnet_demo-sop 0.25 s0"
    script = f"""
import mlflow
client = mlflow.MlflowClient("sqlite:///{store / "mlflow.db"}")
experiment = client.create_experiment("sop-browser", artifact_location="{store / "artifacts"}")
run = client.create_run(experiment, run_name="{name}", tags={{"stage": "finetune"}})
for epoch, value in enumerate([0.21, 0.34, 0.41, 0.45]):
    client.log_metric(run.info.run_id, "val_miou", value, step=epoch)
client.set_terminated(run.info.run_id)
print(experiment)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1], name


@pytest.mark.slow
def test_the_mlflow_ui_shows_a_cell_and_its_curve(tmp_path: Path) -> None:
    browser.chromium()
    experiment, name = log_finetune_run(tmp_path)
    port = free_port()
    command = [
        str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "ui.log", "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_healthy(f"{url}/health", server, "mlflow ui", timeout=120)
            page = browser.render(
                f"{url}/#/experiments/{experiment}/runs?compareRunsMode=CHART",
                tmp_path / "mlflow.png",
                expect=(name, "val_miou"),
            )
        finally:
            stop_group(server)
    browser.assert_not_blank(page.screenshot)
    assert name in page.dom  # the runs list beside the charts
    assert "val_miou" in page.dom  # the chart's title: no table column is named so by default
