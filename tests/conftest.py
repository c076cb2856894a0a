"""Test-wide environment: telemetry off, Prefect/MLflow/DVC state in a temp dir; server fixtures
(a real Prefect or MLflow server on 127.0.0.1, started only by the slow tests that ask for one)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.env import TELEMETRY_OFF

# Before any test module imports prefect, mlflow or dvc: they read these at import time.
_STATE = Path(tempfile.mkdtemp(prefix="sop-tests-"))
os.environ.update(TELEMETRY_OFF)
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ["DVC_SITE_CACHE_DIR"] = str(_STATE / "dvc-site-cache")
(_STATE / "prefect").mkdir()
for leaked in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SOP_PARENT_RUN_ID", "DVC_STAGE"):
    os.environ.pop(leaked, None)

import pytest  # noqa: E402

from pipeline.synthetic import (  # noqa: E402
    SyntheticArchive,
    synthetic_tile_store,
    write_landcoverai_archive,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> SyntheticArchive:
    """Two small scenes in the LandCover.ai v1 archive layout (written once per session)."""
    out = tmp_path_factory.mktemp("archive") / "landcover.ai.v1.zip"
    return write_landcoverai_archive(out, n_scenes=2, height=1100, width=1200, seed=3)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small archive's 8 tiles (512 px; train 6, val 1, test 1); treat it as read-only."""
    return synthetic_tile_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def pretext_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 tiles split 3 train / 4 val / 1 test, for pretraining runs; treat it as read-only."""
    return synthetic_tile_store(tmp_path_factory.mktemp("pretext"), split_fractions=(0.5, 0.5, 0.0))


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1, one per test module; yields its API URL."""
    from tests.servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as api:
        yield api


@pytest.fixture(scope="module")
def mlflow_tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite, served artifacts), one per test module;
    yields its tracking URI."""
    from tests.servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop Prefect's temporary server while output capture is still open.

    Left to its atexit hook it logs to an already closed stream and prints a traceback.
    """
    import sys

    if "prefect.server.api.server" not in sys.modules:
        return
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all()  # ship pending run logs while the server still listens
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
