"""Prefect flows: each DVC stage's work is one flow; each flow run opens one MLflow run.

Conventions: flow and task names read as verbs in the Prefect UI (``tile``, ``tile-scene``),
run names carry the dataset or grid cell, retries only on network tasks and only for errors a
retry can fix, analytics off. With no ``PREFECT_API_URL`` Prefect starts a temporary local
server; with it set, runs report to that server.
"""

from pipeline.flows.common import quiet_user_error_tracebacks
from pipeline.flows.data import download_flow, synth_flow, tile_flow
from pipeline.flows.finetune import evaluate_flow, finetune_flow, weights_flow
from pipeline.flows.paper import paper_flow
from pipeline.flows.pretrain import pretrain_flow
from pipeline.flows.report import report_flow

quiet_user_error_tracebacks()

__all__ = [
    "download_flow",
    "evaluate_flow",
    "finetune_flow",
    "paper_flow",
    "pretrain_flow",
    "report_flow",
    "synth_flow",
    "tile_flow",
    "weights_flow",
]
