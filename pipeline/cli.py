"""``sop``: the command line. Stage commands run the same flows as the DVC stages."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from pipeline.env import apply_env_defaults
from pipeline.errors import PipelineError

app = typer.Typer(
    help="Subimage Overlap Prediction pipeline: download -> tile -> pretrain -> finetune -> "
    "evaluate -> report. Stage commands read params.yaml; `dvc repro` runs them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="The params file; its folder is the pipeline root.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param: KEY=VALUE, e.g. pretrain.epochs=3."),
]
DatasetsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Datasets to process (default: data.datasets in params)."),
]


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report a PipelineError as one line naming the file or parameter, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


def stage_main(fn: Callable[..., Any]) -> None:
    """Entry of a ``stages/*.py`` module: typer parsing plus one-line errors."""
    typer.run(one_line_errors(fn))


def _load(params_file: Path, overrides: list[str] | None) -> tuple[Any, Path]:
    from pipeline.config import load_params

    root = params_file.resolve().parent
    apply_env_defaults(root)
    return load_params(params_file, overrides or []), root


def _per_dataset(
    flow_name: str, datasets: list[str] | None, params_file: Path, overrides: list[str] | None
) -> None:
    params, root = _load(params_file, overrides)
    from pipeline import flows

    run = getattr(flows, flow_name)
    for dataset in datasets or params.data.datasets:
        run(dataset, params, root)


@app.command()
@one_line_errors
def download(
    datasets: DatasetsArg = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Fetch, verify (md5) and safely extract each dataset's archives into data/raw/."""
    _per_dataset("download_flow", datasets, params_file, overrides)


@app.command()
@one_line_errors
def tile(
    datasets: DatasetsArg = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Cut each dataset's scenes into the tile store data/tiles/<dataset> with its index."""
    _per_dataset("tile_flow", datasets, params_file, overrides)


@app.command()
@one_line_errors
def pretrain(
    backbones: Annotated[
        list[str] | None,
        typer.Argument(help="Backbones to pretrain (default: pretrain.backbones)."),
    ] = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Pretrain each backbone on the overlap task; export its encoder to models/pretrain/."""
    params, root = _load(params_file, overrides)
    from pipeline.flows import pretrain_flow

    for backbone in backbones or params.pretrain.backbones:
        pretrain_flow(backbone, params, root)


InitsOption = Annotated[
    list[str] | None,
    typer.Option("--init", "-i", help="An init of the grid (default: every finetune.inits)."),
]
FractionsOption = Annotated[
    list[float] | None,
    typer.Option(
        "--fraction", "-f", help="A label fraction (default: every data.label_fractions)."
    ),
]


@app.command()
@one_line_errors
def weights(
    inits: InitsOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Fetch, verify and load each init's encoder for finetune.backbone into models/init/."""
    params, root = _load(params_file, overrides)
    from pipeline.flows import weights_flow

    for init in inits or params.finetune.inits:
        weights_flow(init, params, root)


def _per_cell(
    flow_name: str,
    inits: list[str] | None,
    fractions: list[float] | None,
    params_file: Path,
    overrides: list[str] | None,
) -> None:
    """Run a flow for each (init, label fraction) cell, the defaults from params."""
    params, root = _load(params_file, overrides)
    from pipeline import flows

    run = getattr(flows, flow_name)
    for init in inits or params.finetune.inits:
        for fraction in fractions or params.data.label_fractions:
            run(init, fraction, params, root)


@app.command()
@one_line_errors
def finetune(
    inits: InitsOption = None,
    fractions: FractionsOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Fine-tune each grid cell (init x label fraction); best checkpoints to models/finetune/."""
    _per_cell("finetune_flow", inits, fractions, params_file, overrides)


@app.command()
@one_line_errors
def evaluate(
    inits: InitsOption = None,
    fractions: FractionsOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Evaluate each cell's best checkpoint on the test split (LoveDA: val)."""
    _per_cell("evaluate_flow", inits, fractions, params_file, overrides)


@app.command()
@one_line_errors
def report(
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Collect every evaluated cell into results/: results.csv, report.md and plots."""
    params, root = _load(params_file, overrides)
    from pipeline.flows import report_flow

    report_flow(params, root)


@app.command()
@one_line_errors
def params(
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Validate params.yaml and print the resolved parameters (defaults <- file <- --set)."""
    from pipeline.config import params_to_yaml

    resolved, _ = _load(params_file, overrides)
    typer.echo(params_to_yaml(resolved), nl=False)


@app.command()
@one_line_errors
def synth(
    out: Annotated[Path, typer.Argument(help="The zip to write (LandCover.ai v1 layout).")],
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Write a synthetic LandCover.ai-style archive (params section `synthetic`)."""
    params, root = _load(params_file, overrides)
    from pipeline.flows import synth_flow

    synth_flow(out, params, root)


@app.command("mlflow-ui")
@one_line_errors
def mlflow_ui(
    params_file: ParamsOption = Path("params.yaml"),
    port: Annotated[int, typer.Option(help="Port on the chosen host.")] = 5000,
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind. Anything but 127.0.0.1 exposes every run to the "
            "network, unauthenticated."
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI over this pipeline's runs (127.0.0.1 unless --host says otherwise)."""
    from pipeline import tracking

    root = params_file.resolve().parent
    apply_env_defaults(root)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        tracking.tracking_uri(root),
    ]
    location = tracking.artifact_location(root)
    if location is not None:
        command += ["--default-artifact-root", location]
    typer.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(command, env=os.environ.copy()))


if __name__ == "__main__":
    app()
