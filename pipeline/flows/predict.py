"""The predict stage's flow: a LoveDA cell's test-server submission (:mod:`pipeline.submission`).

``submissions/loveda/<cell>.zip`` from the cell's best weights and the download stage's
extracted Test images, windowed as evaluation windows (``finetune.window_overlap``), so the
stage reads exactly the params the evaluate stage reads.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline import layout
from pipeline.config import Params
from pipeline.errors import ParamsError
from pipeline.flows.common import tracked_run
from pipeline.flows.finetune import Cell, evaluate_section
from pipeline.predict import load_predictor
from pipeline.submission import LOVEDA_NAME, extracted_folders, loveda_test_images, write_submission
from pipeline.train.jobs import resolve_device


def predict_section(params: Params, cell: Cell) -> dict[str, object]:
    """The params the stage reads (what DVC declares for it): evaluate's."""
    return evaluate_section(params, cell)


@flow(name="predict", flow_run_name="predict-{cell.dataset}-{cell.name}", log_prints=True)
def predict_flow(cell: Cell, params: Params, root: Path) -> Path:
    """The cell's predictions on LoveDA's Test images, zipped as its test server takes them."""
    if cell.dataset != LOVEDA_NAME:
        raise ParamsError(
            f"predict: {cell.dataset!r} has no test server submission; only {LOVEDA_NAME} cells"
        )
    f = params.finetune
    if cell.dataset not in f.datasets or cell.model not in f.models:
        raise ParamsError(
            f"finetune.datasets/models: {cell.dataset}-{cell.model} is not a cell of the grid"
        )
    images = loveda_test_images(extracted_folders(root, cell.dataset))
    out = layout.submission_path(root, cell)
    with tracked_run("predict", params, root, cell.identity(),
                     predict_section(params, cell)):  # fmt: skip
        import mlflow

        weights = layout.cell_dir(root, cell) / layout.BEST_WEIGHTS_FILE
        device = resolve_device(params)
        predictor, _ = load_predictor(weights, params, root, f.window_overlap, f.batch_size, device)
        write_submission(predictor, images, out, progress=params.compute.progress)
        mlflow.log_metric("images", len(images))
    print(f"predict: {out} ({len(images)} LoveDA Test images)")
    return out
