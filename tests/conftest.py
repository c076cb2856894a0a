"""Test-wide environment: telemetry off, Prefect/MLflow/DVC state and every temporary file in
one session folder (removed at the end); server fixtures (a real Prefect or MLflow server on
127.0.0.1, started only by the slow tests that ask for one); and a check that no test wrote into
the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
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
# Every other temporary file, this process's and the stage and server processes' (torchrun's
# torchelastic_* logs, MLflow's db_init_lock-*, multiprocessing's pymp-*), goes under _STATE too,
# not into the machine's temp folder for good. pytest's tmp_path folders: a passing test's is
# removed as it ends (pyproject's tmp_path_retention_policy), a failing test's kept for a look.
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
(_STATE / "tmp").mkdir()
os.environ["TMPDIR"] = tempfile.tempdir = str(_STATE / "tmp")
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
    _stop_prefect_server()
    _check_the_checkout(session)


def _stop_prefect_server() -> None:
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


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session folder goes once the servers have stopped (pytest_sessionfinish)."""
    shutil.rmtree(_STATE, ignore_errors=True)


# --- no test writes into the repository --------------------------------------------------------

# What a session may leave in the checkout: tools' caches, and DVC's scratch folder .dvc/tmp
# (opening a DVC project, as dvc.repo.Repo(...) does, writes a btime file there).
CACHES = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}
# Folders of code: a file git does not ignore that appears there during a session is taken for
# a developer's new file, not a test's output.
SOURCES = ("pipeline/", "stages/", "tests/", "benchmarks/")
_BEFORE = pytest.StashKey[dict[str, str] | None]()
_WRITTEN = pytest.StashKey[list[str]]()


def not_in_git(repo: Path) -> dict[str, str] | None:
    """Every untracked (``??``) and ignored (``!!``) file under ``repo``, .venv left out, with
    its status; None where ``repo`` is no git checkout (or git is missing)."""
    command = ["git", "status", "--porcelain=v1", "-z", "--ignored", "--untracked-files=all"]
    try:
        listed = subprocess.run(
            [*command, "--", ".", ":(exclude).venv"],
            cwd=repo,
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout.decode(errors="surrogateescape")
    except (OSError, subprocess.SubprocessError):
        return None
    return {e[3:]: e[:2] for e in listed.split("\0") if e[:3] in ("?? ", "!! ")}


def written_by_tests(path: str, status: str) -> bool:
    """Whether a file new since the session started counts against it."""
    parts = path.split("/")
    if any(part in CACHES or part.endswith(".egg-info") for part in parts):
        return False
    if "/.dvc/tmp/" in f"/{path}":
        return False
    return status == "!!" or not path.startswith(SOURCES)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = not_in_git(REPO)


def _check_the_checkout(session: pytest.Session) -> None:
    """Fail the session if it left a new file in the repository (tmp_path is the place).

    Only files new since the session started count: a clone's demo outputs, or a checkout's
    earlier runs, are no test's doing."""
    before = session.config.stash.get(_BEFORE, None)
    after = not_in_git(REPO) if before is not None else None
    if before is None or after is None:
        return  # not a git checkout: nothing to compare
    written = sorted(
        p for p, status in after.items() if p not in before and written_by_tests(p, status)
    )
    if written:
        session.config.stash[_WRITTEN] = written
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    written = terminalreporter.config.stash.get(_WRITTEN, [])
    if not written:
        return
    terminalreporter.section("files written into the repository", red=True, bold=True)
    terminalreporter.write_line(
        f"{len(written)} new file(s) in {REPO} since the session started; a test writes under "
        "tmp_path (or monkeypatch.chdir(tmp_path) first), never into the checkout:"
    )
    for path in written[:20]:
        terminalreporter.write_line(f"  {path}")
    if len(written) > 20:
        terminalreporter.write_line(f"  ... and {len(written) - 20} more")
