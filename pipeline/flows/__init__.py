"""Prefect flows: each DVC stage's work is one flow; each flow run opens one MLflow run.

Conventions: flow and task names read as verbs in the Prefect UI (``tile``, ``tile-scene``),
run names carry the dataset or grid cell, retries only on network tasks and only for errors a
retry can fix, analytics off. With no ``PREFECT_API_URL`` Prefect starts a temporary local
server; with it set, runs report to that server.

Import a flow from its module (``pipeline.flows.finetune``): a stage process then loads its own
flow's modules only (the report stage never loads torch), which is most of its start-up time,
and its DVC code deps are exactly those modules.
"""

from __future__ import annotations

from pipeline.flows.common import quiet_user_error_tracebacks

quiet_user_error_tracebacks()
