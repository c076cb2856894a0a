"""Prefect conventions shared by the flows."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params, params_to_yaml
from pipeline.errors import PipelineError
from pipeline.files import write_text


@contextmanager
def api_for_subprocesses() -> Iterator[str]:
    """Let spawned task workers report to this process's Prefect API.

    With no ``PREFECT_API_URL``, Prefect runs a temporary server per process, and each worker of a
    process pool would start its own (about 12 s each here). Exporting the running one's URL
    while the pool lives makes the workers join it instead.
    """
    preset = os.environ.get("PREFECT_API_URL")
    if preset:
        yield preset
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


class _NoTracebackForUserErrors(logging.Filter):
    """A PipelineError already says what to fix in one line; its traceback is noise.

    Prefect logs every failed run with the exception's traceback. For errors a user acts on
    (a missing file, a wrong checksum, a bad parameter) keep the message, drop the traceback.
    Anything else keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_error_tracebacks() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())


def tracked_run(
    stage: str,
    params: Params,
    root: Path,
    identity: Mapping[str, Any],
    section: Mapping[str, Any],
    tile_index_hash: str | None = None,
) -> AbstractContextManager[Any]:
    """The stage's MLflow run: named and tagged by its ``identity`` (:func:`tracking.run_label`),
    the params it reads, the resolved file, the project's prefix."""
    return tracking.stage_run(
        stage,
        root=root,
        identity=identity,
        params=section,
        resolved_params_yaml=params_to_yaml(params),
        tile_index_hash=tile_index_hash,
        experiment_prefix=params.tracking.experiment_prefix,
    )


def portable_path(path: Path | None, root: Path) -> str | None:
    """``path`` relative to the pipeline root when inside it (a clone elsewhere writes the same
    bytes, so DVC sees the same output), else absolute."""
    if path is None:
        return None
    resolved, base = Path(path).resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved)


def json_safe(value: Any) -> Any:
    """NaN (a class absent from a set) as null: DVC and browsers reject NaN in JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(json_safe(value), indent=2))
