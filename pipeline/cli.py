"""``sop``: the command line. Stage commands run the same flows as the DVC stages."""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline import layout
from pipeline.env import apply_env_defaults
from pipeline.errors import ParamsError, PipelineError
from pipeline.stage import one_line_errors

app = typer.Typer(
    help="Subimage Overlap Prediction pipeline: download -> tile -> pretrain -> finetune -> "
    "evaluate -> report. Stage commands read params.yaml; `dvc repro` runs them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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


def _load(params_file: Path, overrides: list[str] | None) -> tuple[Any, Path]:
    from pipeline.config import load_params

    root = params_file.resolve().parent
    apply_env_defaults(root)
    return load_params(params_file, overrides or []), root


def _per_dataset(
    flow_name: str, datasets: list[str] | None, params_file: Path, overrides: list[str] | None
) -> None:
    params, root = _load(params_file, overrides)
    from pipeline.flows import data

    run = getattr(data, flow_name)
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
    subimage_sizes: Annotated[
        list[int] | None,
        typer.Option("--subimage", help="A subimage size (default: pretrain.subimage_sizes)."),
    ] = None,
    color_jitters: Annotated[
        list[float] | None,
        typer.Option("--jitter", help="A colour jitter (default: pretrain.color_jitters)."),
    ] = None,
    image_fractions: Annotated[
        list[float] | None,
        typer.Option("--image-fraction", help="Instead: a share of pretrain.image_fractions."),
    ] = None,
    datasets: Annotated[
        list[str] | None,
        typer.Option("--pretrain-dataset", help="Instead: a dataset of pretrain.datasets."),
    ] = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Pretrain each backbone x pretext variant; export its encoder to models/pretrain/. With
    --image-fraction or --pretrain-dataset: those sweep runs of the main variant instead."""
    params, root = _load(params_file, overrides)
    from pipeline.flows.pretrain import pretrain_flow

    p = params.pretrain
    sweep: list[tuple[float | None, str | None]] = [(f, None) for f in image_fractions or []]
    sweep += [(None, d) for d in datasets or []]
    main = (p.subimage_size, p.color_jitter)
    for backbone in backbones or p.backbones:
        for fraction, dataset in sweep:
            pretrain_flow(backbone, *main, params, root, fraction, dataset)
        if sweep:
            continue
        for subimage in subimage_sizes or p.subimage_sizes:
            for jitter in color_jitters or p.color_jitters:
                pretrain_flow(backbone, subimage, jitter, params, root)


ModelsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model", "-m", help="A <backbone>-<init> of the grid (default: finetune.models)."
    ),
]
DatasetsOption = Annotated[
    list[str] | None,
    typer.Option("--dataset", "-d", help="A dataset of the grid (default: finetune.datasets)."),
]
FractionsOption = Annotated[
    list[float] | None,
    typer.Option(
        "--fraction", "-f", help="A label fraction (default: every data.label_fractions)."
    ),
]
SeedsOption = Annotated[
    list[int] | None,
    typer.Option("--seed", "-S", help="A seed of the grid (default: finetune.seeds)."),
]


@app.command()
@one_line_errors
def weights(
    models: ModelsOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Fetch, verify and load each model's starting encoder into models/init/<model>."""
    params, root = _load(params_file, overrides)
    from pipeline.flows.finetune import weights_flow

    for model in models or params.finetune.models:
        weights_flow(model, params, root)


def _per_cell(
    flow_name: str,
    datasets: list[str] | None,
    models: list[str] | None,
    fractions: list[float] | None,
    seeds: list[int] | None,
    params_file: Path,
    overrides: list[str] | None,
) -> None:
    """Run a flow for each grid cell (dataset, model, label fraction, seed), the defaults from
    params."""
    params, root = _load(params_file, overrides)
    from pipeline.flows import finetune

    run = getattr(finetune, flow_name)
    f = params.finetune
    for dataset in datasets or f.datasets:
        for model in models or f.models:
            for fraction in fractions or params.data.label_fractions:
                for seed in seeds or f.seeds:
                    run(finetune.Cell(dataset, model, fraction, seed), params, root)


@app.command()
@one_line_errors
def finetune(
    datasets: DatasetsOption = None,
    models: ModelsOption = None,
    fractions: FractionsOption = None,
    seeds: SeedsOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Fine-tune each grid cell; best checkpoints to models/finetune/<dataset>/<cell>/."""
    _per_cell("finetune_flow", datasets, models, fractions, seeds, params_file, overrides)


@app.command()
@one_line_errors
def evaluate(
    datasets: DatasetsOption = None,
    models: ModelsOption = None,
    fractions: FractionsOption = None,
    seeds: SeedsOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Evaluate each cell's best checkpoint on the test split (LoveDA: val)."""
    _per_cell("evaluate_flow", datasets, models, fractions, seeds, params_file, overrides)


@app.command()
@one_line_errors
def report(
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Collect every evaluated cell into results/: results.csv, report.md and plots."""
    params, root = _load(params_file, overrides)
    from pipeline.flows.report import report_flow

    report_flow(params, root)


@app.command()
@one_line_errors
def pretext(
    params_file: ParamsOption = Path("params.yaml"),
    min_margin: Annotated[
        float,
        typer.Option(help="How far val_iou must exceed the centred-box baseline to count."),
    ] = 0.05,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when a run falls short of the margin.")
    ] = False,
) -> None:
    """Whether each pretrain run learned more than the position prior (its val_iou against the
    centred-box baseline, from metrics/pretrain/)."""
    from pipeline.report import pretext_checks

    checks = pretext_checks(params_file.resolve().parent)
    for check in checks:
        typer.echo(check.line(min_margin))
    if strict and not all(check.passes(min_margin) for check in checks):
        raise typer.Exit(1)


@app.command()
@one_line_errors
def certificate(
    params_file: ParamsOption = Path("params.yaml"),
    write: Annotated[
        bool, typer.Option("--write", help="Record this machine as the one dvc.lock certifies.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when this machine is not the one recorded.")
    ] = False,
) -> None:
    """Whether this machine is the kind whose outputs the root's dvc.lock records hash for hash
    (its fingerprint against certified-on.json)."""
    from pipeline.certificate import CERTIFICATE_FILE, fingerprint, record, recorded

    root = params_file.resolve().parent
    if write:
        typer.echo(f"{record(root)}: {json.dumps(fingerprint())}")
        return
    here, certified = fingerprint(), recorded(root)
    if certified == here:
        typer.echo(f"this machine is the kind {root / 'dvc.lock'} certifies: {json.dumps(here)}")
        return
    differences = (
        "no certificate"
        if certified is None
        else "; ".join(
            f"{key} {here.get(key)!r}, certified {value!r}"
            for key, value in certified.items()
            if here.get(key) != value
        )
    )
    typer.echo(
        f"this machine is not the kind {root / 'dvc.lock'} certifies ({differences}, "
        f"{root / CERTIFICATE_FILE}): outputs computed in floating point may hash differently"
    )
    if check:
        raise typer.Exit(1)


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
def stages(
    project: Annotated[
        Path, typer.Option("--project", help="The repository root (dvc.yaml, stages/, demo/).")
    ] = Path("."),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when a file would change.")
    ] = False,
) -> None:
    """Derive the pipeline definition: dvc.yaml's code deps from each stage's imports,
    demo/dvc.yaml from dvc.yaml, and the plots' templates in both .dvc/plots/."""
    from pipeline import definition

    root = project.resolve()
    if check:
        stale = [d.path for d in definition.differences(root)]
        for path in stale:
            typer.echo(f"{path}: not what `sop stages` derives; run it and commit the result")
        if stale:
            raise typer.Exit(1)
        typer.echo("dvc.yaml, demo/dvc.yaml and their plot templates are as derived")
        return
    written = definition.write(root)
    typer.echo("\n".join(f"wrote {path}" for path in written) or "nothing to change")


@app.command("plots")
@one_line_errors
def plots_page(
    params_file: ParamsOption = Path("params.yaml"),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The page's folder (default: dvc_plots/).")
    ] = None,
) -> None:
    """`dvc plots show` as a page that works offline: Vega inlined, nothing from a CDN."""
    from pipeline import views

    root = params_file.resolve().parent
    apply_env_defaults(root)
    typer.echo(views.show(root, out).as_uri())


@app.command("metrics")
@one_line_errors
def metrics_view(
    stage: Annotated[str, typer.Argument(help="pretrain, finetune or evaluate.")] = "evaluate",
    params_file: ParamsOption = Path("params.yaml"),
    keys: Annotated[
        str | None, typer.Option("--keys", "-k", help="Comma-separated keys (default: headlines).")
    ] = None,
    precision: Annotated[int, typer.Option(help="Digits after the point.")] = 3,
) -> None:
    """A stage's DVC metrics, narrow: a row per file, its headline figures only."""
    from pipeline import views

    if stage not in views.HEADLINES:
        raise ParamsError(f"stage: {stage!r} is none of {', '.join(views.HEADLINES)}")
    chosen = keys.split(",") if keys else views.HEADLINES[stage]
    folder = params_file.resolve().parent / "metrics" / stage
    typer.echo(views.metrics_table(folder, chosen, precision))


@app.command()
@one_line_errors
def synth(
    out: Annotated[Path, typer.Argument(help="The zip to write (LandCover.ai v1 layout).")],
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """Write a synthetic LandCover.ai-style archive (params section `synthetic`)."""
    params, root = _load(params_file, overrides)
    from pipeline.flows.synth import synth_flow

    synth_flow(out, params, root)


@app.command()
@one_line_errors
def repro(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="DVC stages to reproduce, e.g. download@landcoverai (default: all)."),
    ] = None,
    params_file: ParamsOption = Path("params.yaml"),
    push: Annotated[
        bool | None,
        typer.Option(
            "--push/--no-push",
            help="`dvc push` afterwards (default: when the project has a DVC remote).",
        ),
    ] = None,
    glob: Annotated[
        bool, typer.Option("--glob", help="Targets are patterns: 'finetune@loveda-*'.")
    ] = False,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--cold",
            help="Run the stages in a warm host that imports the stack once (default), or "
            "each in a fresh process.",
        ),
    ] = True,
    pool: Annotated[
        str | None,
        typer.Option(
            help="Coordinate a grid on this Prefect work pool's workers (PREFECT_API_URL names "
            "the server): each stage a deployment run (README, Cluster).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Start this many local workers (one per GPU, or CPU slots), each in a "
            "checkout under .sop/workers/, and run the grid on them (pool 'gpu').",
        ),
    ] = 0,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="With --workers: CPU threads per stage (OMP_NUM_THREADS)."),
    ] = None,
) -> None:
    """`dvc repro` of the params file's folder as the Prefect flow `paper`, under one MLflow
    parent run that nests every stage's run."""
    if params_file.name != "params.yaml":
        raise PipelineError(
            f"{params_file}: DVC stages read params.yaml beside dvc.yaml; give that file"
        )
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.servers import terminate_as_interrupt

    terminate_as_interrupt()
    from pipeline.flows.paper import paper_flow, project_dir
    from pipeline.stagehost import stage_host
    from pipeline.tracking import tracking_uri

    project_dir(root)  # a folder that is no project fails here, before a host starts in it
    # The host imports the stack while Prefect's server starts (seconds each), not after it:
    # the flow then finds it running.
    host = (
        stage_host(layout.state_dir(root), mlflow_uri=tracking_uri(root)) if warm else nullcontext()
    )
    from pipeline.flows.workers import POOL, prefect_server

    pool = pool or (POOL if workers else None)
    server = prefect_server(layout.state_dir(root)) if workers else nullcontext()
    with host, server:
        summary = paper_flow(str(root), targets, push, glob, warm, pool, workers, threads)
    typer.echo(
        f"MLflow parent run {summary['parent_run_id']}; artifacts: "
        f"{', '.join(summary['artifacts']) or 'none'}; pushed: {summary['pushed']}"
    )


@app.command()
@one_line_errors
def predict(
    cell: Annotated[
        str,
        typer.Argument(
            help="A grid cell (<dataset>-<model>-<fraction>-<seed>, as its finetune stage is "
            "named), its folder, or a best.safetensors with its run.json beside it."
        ),
    ],
    rasters: Annotated[
        list[Path] | None, typer.Argument(help="Scenes of any size: GeoTIFF, PNG or JPEG.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The folder to write into.")
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(
            help="Share of a window its neighbours overlap, blended (default: "
            "finetune.window_overlap, as the evaluate stage windows).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Windows per forward pass (default: finetune.batch_size)."),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also <scene>.probabilities.tif (uint8).")
    ] = False,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also <scene>.preview.png, coloured by class.")
    ] = False,
    loveda_submission: Annotated[
        Path | None,
        typer.Option(
            "--loveda-submission",
            help="Instead of rasters: a LoveDA cell on LoveDA's Test images (the download "
            "stage's), zipped into this file as LoveDA's test server takes them.",
        ),
    ] = None,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """A fine-tuned cell on rasters: <scene>.classes.tif per raster (a COG with the input's CRS,
    transform and nodata, and the classes' colours); or, with --loveda-submission, LoveDA's
    test-server zip."""
    params, root = _load(params_file, overrides)
    from pipeline import predict as predicting
    from pipeline.train.jobs import resolve_device

    weights = predicting.cell_weights(cell, root)
    device, batch = resolve_device(params), batch_size or params.finetune.batch_size
    overlap = params.finetune.window_overlap if overlap is None else overlap
    if loveda_submission is not None:
        from pipeline import submission

        if probabilities or preview:
            raise ParamsError(
                "--loveda-submission: the zip holds class maps only; drop --probabilities "
                "and --preview (or predict the rasters you want them for)"
            )
        _check_submission(cell, predicting.read_run(weights), rasters, out)
        predictor, _ = predicting.load_predictor(weights, params, root, overlap, batch, device)
        images = submission.loveda_test_images(submission.extracted_folders(root))
        typer.echo(f"wrote {submission.write_submission(predictor, images, loveda_submission)}")
        return
    if not rasters or out is None:
        raise ParamsError("predict: give rasters and --out (or --loveda-submission ZIP)")
    predictor, info = predicting.load_predictor(weights, params, root, overlap, batch, device)
    spec = predicting.input_bands(params, info.name)
    for outputs in predicting.predict_files(
        predictor, info, spec, rasters, out, probabilities, preview
    ):
        typer.echo(f"wrote {outputs.classes}")


def _check_submission(
    cell: str, run: dict[str, Any], rasters: list[Path] | None, out: Path | None
) -> None:
    """--loveda-submission takes a LoveDA cell and reads its own images."""
    if run["dataset"] != "loveda":
        raise ParamsError(
            f"--loveda-submission: {cell} is a {run['dataset']} cell; LoveDA's test server "
            "takes a loveda cell's predictions"
        )
    if rasters or out is not None:
        raise ParamsError(
            "--loveda-submission: predicts LoveDA's Test images (the download stage's); "
            "give no rasters or --out"
        )


@app.command()
@one_line_errors
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A pretrain run (its name, e.g. resnet50-112-0.0, or a backbone for its main "
            "run; its folder or encoder.safetensors) or a fine-tuned cell (named as for "
            "`sop predict`; its folder or best.safetensors)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The folder to write timm/ and hf/ into.")
    ],
    repo: Annotated[
        str | None,
        typer.Option(help="The hub repository the card names (default: <you>/sop-<name>)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files in a non-empty timm/ or hf/.")
    ] = False,
    params_file: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
) -> None:
    """An encoder for others: timm/ (weights timm alone loads, and the call) and hf/ (the
    Hugging Face hub layout with a model card: provenance, metrics, the data's licence).
    Nothing is uploaded."""
    params, root = _load(params_file, overrides)
    from pipeline import export as exporting

    found = exporting.resolve_source(source, root, params.pretrain.main_variant)
    written = exporting.export(found, params, out, repo, force)
    typer.echo(f"wrote {written.timm_dir} (timm alone loads it; see its README.md)")
    typer.echo(f"wrote {written.hf_dir} (the hub layout and model card; nothing uploaded)")


PortOption = Annotated[
    int, typer.Option(help="Port on the chosen host; one in use is an error, not a retry.")
]
HostOption = Annotated[
    str,
    typer.Option(
        help="Interface to bind. Anything but 127.0.0.1 exposes every run to the network, "
        "unauthenticated."
    ),
]


@app.command("mlflow-ui")
@one_line_errors
def mlflow_ui(
    params_file: ParamsOption = Path("params.yaml"),
    port: PortOption = 5000,
    host: HostOption = "127.0.0.1",
) -> None:
    """Serve the MLflow UI over this pipeline's runs (127.0.0.1 unless --host says otherwise).
    Ctrl-C or SIGTERM stops the server and its workers."""
    from pipeline import servers, tracking
    from pipeline.config import Params, load_params

    root = params_file.resolve().parent
    apply_env_defaults(root)
    servers.check_port(host, port)
    params = load_params(params_file) if params_file.is_file() else Params()
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
    # MLflow 3.17's UI opens experiments in its GenAI view unless the URL asks for the ML one.
    base = f"http://{host}:{port}"
    announce = f"MLflow UI on {tracking.ui_url(base)} (Ctrl-C to stop)"
    prefix = params.tracking.experiment_prefix
    views = tracking.view_urls(tracking.tracking_uri(root), base, prefix)
    announce += "".join(f"\n  {prefix}, {key}: {url}" for key, url in views.items())
    raise typer.Exit(servers.serve(command, os.environ.copy(), announce))


@app.command("prefect-ui")
@one_line_errors
def prefect_ui(
    params_file: ParamsOption = Path("params.yaml"),
    port: PortOption = 4200,
    host: HostOption = "127.0.0.1",
) -> None:
    """Serve the Prefect UI over this pipeline's flow runs (the history `sop repro` leaves in
    .sop/prefect once its temporary server stopped), on 127.0.0.1 unless --host says otherwise.
    Ctrl-C or SIGTERM stops the server and its workers."""
    from pipeline import servers

    root = params_file.resolve().parent
    apply_env_defaults(root)
    servers.check_port(host, port)
    env = os.environ.copy()
    # This server is the API: a URL of another one would only confuse its UI, which otherwise
    # asks port 4200 whatever --port says (a PREFECT_UI_API_URL of the user's, as behind a
    # proxy, is kept).
    env.pop("PREFECT_API_URL", None)
    env.setdefault("PREFECT_UI_API_URL", f"http://{servers.browsable(host)}:{port}/api")
    command = [
        str(Path(sys.executable).parent / "prefect"),
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
    ]
    announce = (
        f"Prefect UI on http://{host}:{port}, history in {env['PREFECT_HOME']} (Ctrl-C to stop)"
    )
    raise typer.Exit(servers.serve(command, env, announce))


if __name__ == "__main__":
    app()
