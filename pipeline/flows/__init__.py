"""Prefect flows: each DVC stage's work is one flow; each flow run opens one MLflow run.

Conventions: flow and task names read as verbs in the Prefect UI (``tile``, ``tile-scene``),
run names carry the dataset or grid cell, retries only on network tasks and only for errors a
retry can fix, analytics off. With no ``PREFECT_API_URL`` Prefect starts a temporary local
server; with it set, runs report to that server.

The flows are imported on first use: a stage process imports its own flow's module only (the
report stage never loads torch), which is most of a stage's start-up time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.flows.common import quiet_user_error_tracebacks

if TYPE_CHECKING:
    from pipeline.flows.data import download_flow, synth_flow, tile_flow
    from pipeline.flows.finetune import evaluate_flow, finetune_flow, weights_flow
    from pipeline.flows.paper import paper_flow
    from pipeline.flows.pretrain import pretrain_flow
    from pipeline.flows.report import report_flow

_MODULE_OF = {
    "download_flow": "data",
    "synth_flow": "data",
    "tile_flow": "data",
    "evaluate_flow": "finetune",
    "finetune_flow": "finetune",
    "weights_flow": "finetune",
    "paper_flow": "paper",
    "pretrain_flow": "pretrain",
    "report_flow": "report",
}

quiet_user_error_tracebacks()


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


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
