"""The ``paper`` run and the stage processes its ``dvc repro`` starts: links both ways.

Down: the paper flow exports its flow run's id in ``SOP_PREFECT_PARENT_RUN``; a stage process
then runs its flow as a subflow of that run (:func:`under_parent_flow_run`), the way Prefect
links a flow run sent to other infrastructure to its parent: a detached context of the parent
run, so that the engine creates the parent's tracking task run and the child's
``parent_task_run_id``. Every such run is also tagged with the paper run's name
(``repro-<UTC time>``), which the UI's tag filter takes.

Up: a failing stage appends its one-line error to the file named by ``SOP_STAGE_ERRORS``
(:func:`record_stage_error`), which the paper flow repeats in its own log and error: DVC's
output goes to the terminal, not to the paper run's log.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

PARENT_FLOW_RUN_ENV = "SOP_PREFECT_PARENT_RUN"
STAGE_ERRORS_ENV = "SOP_STAGE_ERRORS"
MAX_ERROR_CHARS = 500


def _parent_placeholder() -> None:
    """The parent's flow in a stage's context: only its name and identity are read."""


@contextmanager
def under_parent_flow_run() -> Iterator[None]:
    """Flow runs started meanwhile are subflow runs of ``$SOP_PREFECT_PARENT_RUN`` (when set)
    and carry its name as a tag. A parent the API does not know links nothing."""
    parent_id = os.environ.get(PARENT_FLOW_RUN_ENV)
    if not parent_id:
        yield
        return
    from uuid import UUID

    from prefect import Flow, tags
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound
    from prefect.results import ResultStore
    from prefect.task_runners import ThreadPoolTaskRunner

    client = get_client(sync_client=True)
    try:
        with client:
            parent = client.read_flow_run(UUID(parent_id))
    except (ValueError, ObjectNotFound):
        yield
        return
    with ExitStack() as stack:
        runner: ThreadPoolTaskRunner[Any] = stack.enter_context(ThreadPoolTaskRunner(max_workers=1))
        stack.enter_context(
            FlowRunContext(
                flow=Flow(_parent_placeholder, name="paper"),
                flow_run=parent,
                client=client,
                task_runner=runner,
                result_store=ResultStore(),
                detached=True,
            )
        )
        stack.enter_context(tags(parent.name))
        yield


def error_line(exc: BaseException) -> str:
    """An exception as one line: a PipelineError's message, else its type and message."""
    text = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def record_stage_error(exc: BaseException) -> None:
    """Append ``<DVC stage>: <error line>`` to ``$SOP_STAGE_ERRORS`` (when set)."""
    path = os.environ.get(STAGE_ERRORS_ENV)
    if not path:
        return
    stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{stage}: {error_line(exc)}\n")


def recorded_errors(path: Path) -> list[str]:
    """The lines :func:`record_stage_error` wrote to ``path`` (none if it is missing)."""
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
