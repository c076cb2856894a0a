"""The download and tile flows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun
from prefect.task_runners import ProcessPoolTaskRunner
from tqdm import tqdm

from pipeline import tracking
from pipeline.config import Params, params_to_yaml
from pipeline.data import catalog, download, store, tiling
from pipeline.data.catalog import RemoteFile
from pipeline.data.store import StoreMeta
from pipeline.errors import DataError, TransientDownloadError
from pipeline.flows.common import api_for_subprocesses

SOURCE_FILE = "source.json"


def raw_dir(root: Path, dataset: str) -> Path:
    return root / "data" / "raw" / dataset


def tiles_dir(root: Path, dataset: str) -> Path:
    return root / "data" / "tiles" / dataset


def summary_path(root: Path, dataset: str) -> Path:
    """The tile stage's DVC metrics file (beside the store: DVC forbids outputs inside outputs)."""
    return root / "data" / "tiles" / f"{dataset}.summary.json"


def retry_if_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a download only when a retry can help (connection dropped, 5xx, timeout)."""
    try:
        state.result()
    except TransientDownloadError:
        return True
    except Exception:
        return False
    return False


@task(
    name="fetch-archive",
    task_run_name="fetch {remote.filename}",
    retries=4,
    retry_delay_seconds=[2, 10, 30, 60],
    retry_condition_fn=retry_if_transient,
    cache_policy=NONE,
)
def fetch_archive(
    remote: RemoteFile, location: str, md5: str | None, dest: Path, root: Path, timeout_s: float
) -> Path:
    """A local archive is verified in place (never copied); a URL is downloaded into ``dest``."""
    param = "data.sources.<dataset>.url"
    local = download.local_path(location, root)
    if local is not None:
        if not local.exists():
            raise DataError(f"{local}: archive not found ({param})")
        if local.is_file():
            download.verify(local, md5, f"local archive; set {param} or its md5")
        return local
    return download.download(
        location, dest / remote.filename, md5, timeout_s=timeout_s, param_name=param
    )


@task(name="extract-archive", task_run_name="extract {archive.name}", cache_policy=NONE)
def extract_archive(archive: Path, target: Path, max_unpacked_gb: float) -> Path:
    if archive.is_dir():
        return archive
    return download.safe_extract(archive, target, max_unpacked_bytes=int(max_unpacked_gb * 1e9))


@flow(name="download", flow_run_name="download-{dataset}", log_prints=True)
def download_flow(dataset: str, params: Params, root: Path) -> Path:
    """Fetch, verify and extract one dataset's archives into ``data/raw/<dataset>``."""
    info = catalog.get_dataset(dataset)
    source = params.data.source(dataset)  # type: ignore[arg-type]
    out = raw_dir(root, dataset)
    started = time.perf_counter()
    section = {
        "data": {
            "sources": {dataset: source.model_dump()},
            "download": params.data.download.model_dump(),
        }
    }
    with tracking.stage_run(
        "download",
        root=root,
        run_name=dataset,
        params=section,
        resolved_params_yaml=params_to_yaml(params),
        experiment_prefix=params.tracking.experiment_prefix,
    ) as run:
        extracted = []
        for remote in info.sources:
            location = source.url or remote.url
            md5 = None if source.md5 == "skip" else (source.md5 or remote.md5)
            archive = fetch_archive(
                remote, location, md5, out / "archives", root, params.data.download.timeout_s
            )
            folder = extract_archive(
                archive, out / "extracted", params.data.download.max_unpacked_gb
            )
            extracted.append(
                {
                    "archive": remote.filename,
                    "location": location,
                    "md5": md5,
                    "folder": str(Path(folder).resolve()),
                }
            )
        (out / SOURCE_FILE).write_text(
            json.dumps({"dataset": dataset, "sources": extracted}, indent=2)
        )
        import mlflow

        mlflow.log_metric("seconds", time.perf_counter() - started)
        mlflow.log_dict({"sources": extracted}, "sources.json")
        print(f"{dataset}: verified and extracted into {out} (MLflow run {run.info.run_id})")
    return out


@task(name="tile-scene", task_run_name="tile {scene.record.scene}", cache_policy=NONE)
def tile_scene_task(scene: tiling.ScenePlan, out_dir: Path, meta: StoreMeta) -> int:
    return tiling.tile_scene(scene, out_dir, meta)


def _source_folders(raw: Path) -> list[Path]:
    manifest = raw / SOURCE_FILE
    if not manifest.exists():
        raise DataError(f"{manifest}: missing; run the download stage for this dataset first")
    return [Path(s["folder"]) for s in json.loads(manifest.read_text())["sources"]]


@flow(name="tile", flow_run_name="tile-{dataset}", log_prints=True)
def tile_flow(dataset: str, params: Params, root: Path) -> dict[str, Any]:
    """Cut one dataset's scenes into ``data/tiles/<dataset>`` with its index and subsets."""
    info = catalog.get_dataset(dataset)
    data = params.data
    out = tiles_dir(root, dataset)
    started = time.perf_counter()
    section = {
        "data": {
            "tile_size": data.tile_size,
            "label_fractions": data.label_fractions,
            "subset_seed": data.subset_seed,
            "workers": data.workers,
        }
    }
    with tracking.stage_run(
        "tile",
        root=root,
        run_name=dataset,
        params=section,
        resolved_params_yaml=params_to_yaml(params),
        experiment_prefix=params.tracking.experiment_prefix,
    ):
        import mlflow

        records = [
            r
            for folder in _source_folders(raw_dir(root, dataset))
            for r in info.scene_records(folder)
        ]
        meta = StoreMeta(
            dataset=dataset,
            tile_size=data.tile_size,
            class_names=info.class_names,
            class_colors=info.class_colors,
            ignore_index=info.ignore_index,
            has_masks=True,
            label_fractions=tuple(sorted(data.label_fractions, reverse=True)),
            subset_seed=data.subset_seed,
        )
        plan = tiling.plan_tiling(records, meta)
        pending = tiling.prepare_store(plan, out)
        print(
            f"{dataset}: {len(plan.scenes)} scenes, {plan.n_tiles} tiles, "
            f"{len(plan.scenes) - len(pending)} scenes already done"
        )
        if pending:
            _tile_scenes(pending, out, meta, data.workers, dataset)
        index = tiling.finalize_store(plan, out)
        summary = tiling.summarize(index, meta)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        summary_path(root, dataset).write_text(json.dumps(summary, indent=2))
        mlflow.set_tag(tracking.TILE_INDEX_TAG, store.index_hash(out))
        mlflow.log_metrics(
            {
                "tiles": summary["tiles"],
                "seconds": summary["seconds"],
                **{f"tiles.{k}": v for k, v in summary["tiles_per_split"].items()},
            }
        )
        mlflow.log_dict(summary, "summary.json")
    print(f"{dataset}: {summary['tiles']} tiles {summary['tiles_per_split']} -> {out}")
    return summary


def _tile_scenes(
    pending: list[tiling.ScenePlan], out: Path, meta: StoreMeta, workers: int, dataset: str
) -> None:
    """A process per scene; a failed scene does not stop the others, whose work is kept."""
    errors: list[BaseException] = []
    runner = ProcessPoolTaskRunner(max_workers=min(workers, len(pending)))
    with (
        api_for_subprocesses(),
        runner,
        tqdm(total=sum(len(s.grid) for s in pending), unit="tile", desc=f"tile {dataset}") as bar,
    ):
        futures = [
            runner.submit(tile_scene_task, {"scene": s, "out_dir": out, "meta": meta})
            for s in pending
        ]
        for future, scene in zip(futures, pending, strict=True):
            try:
                bar.update(future.result())
            except Exception as exc:
                errors.append(exc)
                bar.write(f"failed: {scene.record.scene}: {exc}")
    if errors:
        raise errors[0]


@flow(name="synthesize", flow_run_name="synthesize-{out.name}", log_prints=True)
def synth_flow(out: Path, params: Params, root: Path) -> Path:
    """Write the demo's synthetic LandCover.ai-style archive."""
    from pipeline.data.synthetic import write_archive_from_params

    spec = params.synthetic
    with tracking.stage_run(
        "synthesize",
        root=root,
        run_name=out.name,
        params={"synthetic": spec.model_dump(), "data": {"tile_size": params.data.tile_size}},
        resolved_params_yaml=params_to_yaml(params),
        experiment_prefix=params.tracking.experiment_prefix,
    ):
        import mlflow

        archive = write_archive_from_params(out, spec, params.data.tile_size)
        counts = {split: len(ids) for split, ids in archive.splits.items()}
        mlflow.log_metrics({f"tiles.{k}": v for k, v in counts.items()})
        mlflow.set_tag("archive.md5", archive.md5)
    print(f"{archive.path}: {len(archive.scenes)} scenes, tiles {counts}, md5 {archive.md5}")
    return archive.path
