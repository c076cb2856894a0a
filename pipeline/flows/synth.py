"""The demo's synth stage: a synthetic LandCover.ai-style archive in the official layout."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from pipeline.config import Params
from pipeline.data import download
from pipeline.flows.common import tracked_run
from pipeline.synthetic import write_archive_from_params


def md5_file_of(archive: Path) -> Path:
    """Where the synth stage records its archive's md5 (``data.sources.<dataset>.md5_file``)."""
    return archive.with_name(archive.name + ".md5")


@flow(name="synthesize", flow_run_name="synthesize-{out.name}", log_prints=True)
def synth_flow(out: Path, params: Params, root: Path) -> Path:
    """Write the demo's synthetic LandCover.ai-style archive, and its md5 in ``<archive>.md5``."""
    spec = params.synthetic
    tile_size = params.data.tiling_for("landcoverai").tile_size
    with tracked_run(
        "synthesize",
        params,
        root,
        {"archive": out.name},
        {"synthetic": spec.model_dump(), "data": {"tile_size": tile_size}},
    ):
        import mlflow

        archive = write_archive_from_params(out, spec, tile_size)
        # The download stage checks the archive against this record, as against an official md5:
        # the same code path, and no digest that a drawing library's release could outdate.
        download.write_md5_file(md5_file_of(archive.path), {archive.path.name: archive.md5})
        counts = {split: len(ids) for split, ids in archive.splits.items()}
        mlflow.log_metrics({f"tiles.{k}": v for k, v in counts.items()})
        mlflow.set_tag("archive.md5", archive.md5)
    print(f"{archive.path}: {len(archive.scenes)} scenes, tiles {counts}, md5 {archive.md5}")
    return archive.path
