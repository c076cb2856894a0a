"""What every ``stages/*.py`` entry and ``sop`` command shares: one-line errors, the warm host.

Kept apart from the CLI so that a stage imports only its own flow's modules: dvc.yaml's code
deps are each stage's import closure (``sop stages``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer

from pipeline.errors import PipelineError
from pipeline.files import disk_full

P = ParamSpec("P")
R = TypeVar("R")


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report a PipelineError, or a disk that filled up anywhere, as one line naming the file or
    parameter, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except OSError as exc:
            full = disk_full(exc.filename or "a write", exc)
            if full is None:
                raise
            typer.secho(f"error: {full}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


def _recording_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Hand a failing stage's one-line error to the ``paper`` run above it (if any)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import click

        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, click.exceptions.Exit):
                from pipeline.flows.links import record_stage_error

                record_stage_error(exc)
            raise

    return wrapper


def stage_main(fn: Callable[..., Any]) -> None:
    """Entry of a ``stages/*.py`` module: typer parsing plus one-line errors. Under ``sop
    repro`` the stage runs in the warm stage host (``pipeline.stagehost``) when one is up, and
    its flow run is a subflow of the repro's ``paper`` run (:mod:`pipeline.flows.links`)."""
    from pipeline.stagehost import run_in_host
    from pipeline.timing import record_if_asked

    code = run_in_host(Path(sys.argv[0]), sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    record_if_asked()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from pipeline.flows.links import under_parent_flow_run

    # No flow-run heartbeats in a stage: its run ends with its process, a crash fails its DVC
    # command and the `paper` flow around it (which keeps its heartbeat), and stopping the
    # heartbeat thread would delay every stage's exit.
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        under_parent_flow_run(),
    ):
        typer.run(one_line_errors(_recording_errors(fn)))
