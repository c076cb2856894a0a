"""Seeded synthetic aerial scenes, the demo's and the tests' stand-in for LandCover.ai.

The real archive cannot be downloaded here, so the demo and the tests use rural scenes drawn
by this package: strip fields, woodland, water, roads and farmsteads at 0.25 m per pixel, with
a class mask that matches the image pixel for pixel. ``drawing`` holds the primitives,
``fields`` the farmland, ``scene`` paints one scene, ``archive`` writes scenes in the
LandCover.ai v1 archive layout (or straight into a tile store). It lives apart from
``pipeline.data``, which reads real datasets.
"""

from pipeline.synthetic.archive import (
    LANDCOVERAI_CLASS_NAMES,
    LANDCOVERAI_CRS,
    PIXEL_SIZE_M,
    SPLIT_NAMES,
    SceneSpec,
    SyntheticArchive,
    painted_tile_store,
    synthetic_tile_store,
    write_archive_from_params,
    write_landcoverai_archive,
)
from pipeline.synthetic.scene import synth_scene

__all__ = [
    "LANDCOVERAI_CLASS_NAMES",
    "LANDCOVERAI_CRS",
    "PIXEL_SIZE_M",
    "SPLIT_NAMES",
    "SceneSpec",
    "SyntheticArchive",
    "painted_tile_store",
    "synth_scene",
    "synthetic_tile_store",
    "write_archive_from_params",
    "write_landcoverai_archive",
]
