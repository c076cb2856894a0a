"""The download and tile flows."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun
from prefect.task_runners import ProcessPoolTaskRunner
from tqdm import tqdm

from pipeline import layout, tracking, transfer
from pipeline.config import Params
from pipeline.config_data import SourceParams
from pipeline.data import catalog, download, store, tiling
from pipeline.data.catalog import RemoteFile
from pipeline.data.store import StoreMeta
from pipeline.errors import DataError, DownloadError, TransientDownloadError
from pipeline.flows.common import api_for_subprocesses, portable_path, tracked_run, write_json

RETRY_DELAYS_S = (2.0, 10.0, 30.0, 60.0)


def retry_if_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a download only when a retry can help (connection dropped, 5xx, timeout)."""
    try:
        state.result()
    except TransientDownloadError:
        return True
    except Exception:
        return False
    return False


@dataclass(frozen=True)
class Location:
    """Where one archive of a dataset comes from, resolved from the catalog and params."""

    remote: RemoteFile
    url: str | None  # set: download it
    path: Path | None  # set: a local archive (verified in place) or an extracted folder
    md5: str | None


def resolve_locations(
    info: catalog.DatasetInfo, source: SourceParams, root: Path, dataset: str
) -> list[Location]:
    """Each archive's location. With several archives (LoveDA), ``url`` is the folder or URL
    prefix that holds them all by their official names, or a folder already extracted."""
    param = f"data.sources.{dataset}.url"
    several = len(info.sources) > 1
    recorded = None
    if source.md5_file is not None:
        md5_param = f"data.sources.{dataset}.md5_file"
        recorded = download.read_md5_file(root / source.md5_file, md5_param)
        for remote in info.sources:
            if remote.filename not in recorded:
                raise DataError(
                    f"{root / source.md5_file}: no md5 of {remote.filename} ({md5_param})"
                )
    locations = []
    for remote in info.sources:
        md5 = source.md5_for(remote.filename, remote.md5, recorded)
        if source.url is None:
            if remote.url is None:
                raise DownloadError(f"{dataset}: {info.how_to_get}")
            locations.append(Location(remote, remote.url, None, md5))
            continue
        local = download.local_path(source.url, root)
        if local is None:
            url = f"{source.url.rstrip('/')}/{remote.filename}" if several else source.url
            locations.append(Location(remote, url, None, md5))
        elif local.is_dir():
            archive = local / remote.filename
            if archive.is_file():
                locations.append(Location(remote, None, archive, md5))
            else:  # an extracted copy: nothing to verify
                locations.append(Location(remote, None, local, None))
        elif local.is_file():
            if several:
                raise DataError(
                    f"{param}: {local} is one file, but {dataset} has {len(info.sources)} "
                    f"archives ({', '.join(r.filename for r in info.sources)}); give their folder"
                )
            if source.md5 is None and recorded is None and local.name != remote.filename:
                # Not the archive whose md5 we know (another copy or layout): nothing to check.
                print(f"{local.name}: not {remote.filename}, md5 not checked ({param})")
                md5 = None
            locations.append(Location(remote, None, local, md5))
        else:
            hint = f"; {info.how_to_get}" if info.how_to_get else ""
            raise DataError(f"{local}: not found ({param}){hint}")
    return locations


def retry_delays(retries: int) -> list[float]:
    """Seconds before each retry (``data.download.retries`` of them): 2, 10, 30, then 60."""
    return [RETRY_DELAYS_S[min(i, len(RETRY_DELAYS_S) - 1)] for i in range(retries)]


@task(
    name="fetch-archive",
    task_run_name="fetch {location.remote.filename}",
    retries=len(RETRY_DELAYS_S),
    retry_delay_seconds=list(RETRY_DELAYS_S),
    retry_condition_fn=retry_if_transient,
    cache_policy=NONE,
)
def fetch_archive(location: Location, dest: Path, timeout_s: float, param: str) -> Path:
    """A local archive is verified in place (never copied); a URL is downloaded into ``dest``."""
    if location.path is not None:
        if location.path.is_file():
            transfer.verify(
                location.path, location.md5, f"local archive; set {param}, or its md5 or md5_file"
            )
        return location.path
    assert location.url is not None
    return transfer.download(
        location.url,
        dest / location.remote.filename,
        location.md5,
        timeout_s=timeout_s,
        param_name=param,
    )


@task(name="extract-archive", task_run_name="extract {archive.name}", cache_policy=NONE)
def extract_archive(archive: Path, target: Path, max_unpacked_gb: float) -> Path:
    if archive.is_dir():
        return archive
    return download.safe_extract(archive, target, max_unpacked_bytes=int(max_unpacked_gb * 1e9))


@flow(name="download", flow_run_name="download-{dataset}", log_prints=True)
def download_flow(dataset: str, params: Params, root: Path) -> Path:
    """Fetch, verify and extract one dataset's archives into ``data/raw/<dataset>``.

    A user's own imagery (``data.custom``) is used where it lies: nothing is copied.
    """
    data = params.data
    info = catalog.get_dataset(dataset, data, root)
    source = data.source(dataset)
    out = layout.raw_dir(root, dataset)
    started = time.perf_counter()
    section: dict[str, Any] = {"data": {"download": data.download.model_dump()}}
    if dataset in data.custom:
        section["data"]["custom"] = {dataset: data.custom[dataset].model_dump()}
    else:
        section["data"]["sources"] = {dataset: source.model_dump()}
    with tracked_run("download", params, root, {"dataset": dataset}, section) as run:
        import mlflow

        extracted: list[dict[str, Any]] = []
        if dataset in data.custom:
            folder = (root / data.custom[dataset].images).resolve()
            if not folder.is_dir():
                raise DataError(f"{folder}: not a folder (data.custom.{dataset}.images)")
            extracted.append(
                {
                    "archive": None,
                    "location": portable_path(folder, root),
                    "md5": None,
                    "folder": portable_path(folder, root),
                }
            )
        for location in resolve_locations(info, source, root, dataset):
            archive = fetch_archive.with_options(
                retries=data.download.retries,
                retry_delay_seconds=retry_delays(data.download.retries),
            )(location, out / "archives", data.download.timeout_s, f"data.sources.{dataset}.url")
            folder = extract_archive(
                archive,
                out / "extracted" / Path(location.remote.filename).stem,
                data.download.max_unpacked_gb,
            )
            entry = {
                "archive": location.remote.filename,
                "location": location.url or portable_path(location.path, root),
                "md5": location.md5,
                "folder": portable_path(folder, root),
            }
            if all(e["folder"] != entry["folder"] for e in extracted):
                extracted.append(entry)
            if (
                not data.download.keep_archive
                and location.url is not None
                and Path(archive).parent == out / "archives"
            ):
                Path(archive).unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / layout.SOURCE_FILE, {"dataset": dataset, "sources": extracted})
        mlflow.log_metric("seconds", time.perf_counter() - started)
        mlflow.log_dict({"sources": extracted}, "sources.json")
        print(f"{dataset}: ready in {out} (MLflow run {run.info.run_id})")
    return out


@task(name="tile-scene", task_run_name="tile {scene.record.scene}", cache_policy=NONE)
def tile_scene_task(
    scene: tiling.ScenePlan, out_dir: Path, meta: StoreMeta, threads: int = 1
) -> int:
    return tiling.tile_scene(scene, out_dir, meta, threads)


def _source_folders(raw: Path, root: Path) -> list[Path]:
    manifest = raw / layout.SOURCE_FILE
    if not manifest.exists():
        raise DataError(f"{manifest}: missing; run the download stage for this dataset first")
    return [root / s["folder"] for s in json.loads(manifest.read_text())["sources"]]


@flow(name="tile", flow_run_name="tile-{dataset}", log_prints=True)
def tile_flow(dataset: str, params: Params, root: Path) -> dict[str, Any]:
    """Cut one dataset's scenes into ``data/tiles/<dataset>`` with its index and subsets."""
    data = params.data
    info = catalog.get_dataset(dataset, data, root)
    tiling_params = data.tiling_for(dataset)
    out = layout.tiles_dir(root, dataset)
    started = time.perf_counter()
    section = {
        "data": {
            "tiling": {dataset: tiling_params.model_dump()},
            "label_fractions": data.label_fractions,
            "subset_seed": data.subset_seed,
            "split_fractions": data.split_fractions,
            "split_seed": data.split_seed,
            "workers": data.workers,
        }
    }
    with tracked_run("tile", params, root, {"dataset": dataset}, section):
        import mlflow

        records = [
            r
            for folder in _source_folders(layout.raw_dir(root, dataset), root)
            for r in info.scene_records(folder, data)
        ]
        meta = StoreMeta(
            dataset=dataset,
            tile_size=tiling_params.tile_size,
            remainder=tiling_params.remainder,
            class_names=info.class_names,
            class_colors=info.class_colors,
            ignore_index=info.ignore_index,
            evaluated_classes=info.evaluated_classes,
            has_masks=info.has_masks,
            label_fractions=tuple(sorted(data.label_fractions, reverse=True)),
            subset_seed=data.subset_seed,
        )
        plan = tiling.plan_tiling(records, meta)
        build = tiling.prepare_store(plan, out)
        print(
            f"{dataset}: {len(plan.scenes)} scenes, {plan.n_tiles} tiles, "
            f"{len(plan.scenes) - len(build.pending)} scenes already done"
            + (
                f"; building beside the old store in {build.directory}"
                if build.directory != out
                else ""
            )
        )
        if build.pending:
            _tile_scenes(build.pending, build.directory, meta, data.workers, dataset)
        index = tiling.finalize_store(plan, out)
        summary = tiling.summarize(index, meta)
        write_json(
            layout.summary_path(root, dataset), summary
        )  # no timing: a DVC metric, the same bytes
        mlflow.set_tag(tracking.TILE_INDEX_TAG, store.index_hash(out))
        mlflow.log_metrics(
            {
                "tiles": summary["tiles"],
                "seconds": round(time.perf_counter() - started, 2),
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
    processes = min(workers, len(pending))
    # The cores the scene processes leave idle decode blocks (one big scene: all of them).
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    runner = ProcessPoolTaskRunner(max_workers=processes)
    with (
        api_for_subprocesses(),
        runner,
        tqdm(total=sum(len(s.grid) for s in pending), unit="tile", desc=f"tile {dataset}") as bar,
    ):
        futures = [
            runner.submit(
                tile_scene_task, {"scene": s, "out_dir": out, "meta": meta, "threads": threads}
            )
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
