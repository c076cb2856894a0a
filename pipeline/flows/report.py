"""The report stage's flow: results.csv, report.md and the plots from every evaluated cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from pipeline import layout
from pipeline.claims import Bootstrap
from pipeline.config import Params
from pipeline.flows.common import tracked_run
from pipeline.report import write_report


def report_section(params: Params) -> dict[str, Any]:
    """The params the report reads (what DVC declares for it)."""
    return {
        "finetune": {"convergence_threshold": params.finetune.convergence_threshold},
        "report": params.report.model_dump(mode="json"),
        "pretrain": {"dataset": params.pretrain.dataset},
    }


@flow(name="report", flow_run_name="report", log_prints=True)
def report_flow(params: Params, root: Path) -> dict[str, Path]:
    """Collect every evaluated cell under ``root`` into results/ and log it to MLflow."""
    out = layout.results_dir(root)
    with tracked_run("report", params, root, {}, report_section(params)):
        import mlflow

        r = params.report
        boot = Bootstrap(r.resamples, r.confidence, r.seed)
        threshold = params.finetune.convergence_threshold
        paths = write_report(root, out, threshold, boot, r.data, params.pretrain.dataset)
        for path in paths.values():
            mlflow.log_artifact(str(path))
    print(f"report: {paths['report']} (results table: {paths['results']})")
    return paths
