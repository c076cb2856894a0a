"""Network faults from a real HTTP server on 127.0.0.1, met as a user meets them.

The dataset cases run the download stage (``python stages/download.py landcoverai``) in a project
whose params.yaml points ``data.sources.landcoverai.url`` at :class:`FileServer` with the md5
pinned: a dropped connection is resumed with a Range request, a 500 is retried, wrong bytes are
set aside as ``.bad`` and never used, and a 404 or no network stops with one line naming the URL
and the parameter to set. Every failure leaves the project's earlier outputs as they were.

The weights stage takes no URL parameter (each init's URL is pinned in ``pipeline.models.inits``),
so the initialisation-weights cases go through ``init_state``, the function the stage calls, with
the pinned URL pointed at the server as ``tests/test_inits.py`` does. That module already covers a
dropped download, a refused connection and a 404 there; added here: a 500 retried, wrong bytes
set aside then fetched afresh, and a host that does not resolve.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pipeline import layout
from pipeline.errors import ChecksumError
from pipeline.models.inits import INITS, init_state
from pipeline.models.weights import WeightsError
from tests.reliability.conftest import assert_intact, one_line_error, run_stage, snapshot
from tests.servers import FileServer, free_port
from tests.test_inits import serve_as

pytestmark = pytest.mark.slow

DATASET = "landcoverai"
ARCHIVE = "landcover.ai.v1.zip"  # the catalog's file name: the download's target name
URL_PARAM = f"data.sources.{DATASET}.url"
# Tracking logs grow with every run, failed ones included: not an earlier output.
TRACKING = (layout.STATE_DIR, "mlruns", "mlflow.db", "mlartifacts")


@dataclass(frozen=True)
class ServedArchive:
    """A small zip in the LandCover.ai layout; ``members`` is what extraction must produce."""

    data: bytes
    md5: str
    members: dict[str, bytes]


def build_archive() -> ServedArchive:
    """~400 KB of seeded, incompressible members, stored: a third of it is mid-file."""
    rng = random.Random(8)
    members = {f"images/M-33-{i}.tif": rng.randbytes(120_000) for i in range(3)} | {
        "train.txt": b"M-33-0_0\n",
        "val.txt": b"M-33-1_0\n",
        "test.txt": b"M-33-2_0\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), content)
    data = buffer.getvalue()
    return ServedArchive(data, hashlib.md5(data).hexdigest(), members)


@pytest.fixture(scope="module")
def archive() -> ServedArchive:
    return build_archive()


@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, archive: ServedArchive
) -> Iterator[FileServer]:
    folder = tmp_path_factory.mktemp("mirror")
    (folder / ARCHIVE).write_bytes(archive.data)
    server = FileServer(folder)
    yield server
    server.close()


@pytest.fixture(scope="module")
def env(stage_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The stages' environment, with one MLflow store for the module: creating a project's
    own sqlite store costs seconds per stage run, and tracking is not what is tested here."""
    store = tmp_path_factory.mktemp("tracking") / "mlflow.db"
    return {**stage_env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}


@pytest.fixture
def server(module_server: FileServer) -> FileServer:
    """The module's server with no faults pending and no requests recorded."""
    module_server.faults.clear()
    module_server.requests.clear()
    return module_server


def make_project(root: Path, url: str, md5: str) -> Path:
    """A project whose params point the dataset at ``url``, holding earlier outputs: the
    folder an earlier archive was extracted to and its manifest."""
    (root / "params.yaml").write_text(
        f'data:\n  sources:\n    {DATASET}:\n      url: {url}\n      md5: "{md5}"\n'
    )
    earlier = raw(root) / "extracted" / "landcover.ai.v1"
    (earlier / "images").mkdir(parents=True)
    (earlier / "images" / "earlier.tif").write_bytes(b"an earlier archive's scene")
    (earlier / ".extracted").write_text("landcover.ai.v1.zip 26 md5:" + "1" * 32)
    manifest = {"dataset": DATASET, "sources": [{"archive": ARCHIVE, "md5": "1" * 32}]}
    (raw(root) / layout.SOURCE_FILE).write_text(json.dumps(manifest))
    return root


def raw(root: Path) -> Path:
    return layout.raw_dir(root, DATASET)


def assert_extracted(root: Path, archive: ServedArchive) -> None:
    """The archive in place is the served one, and its extraction holds exactly its members."""
    assert (raw(root) / "archives" / ARCHIVE).read_bytes() == archive.data
    assert not (raw(root) / "archives" / f"{ARCHIVE}.part").exists()
    folder = raw(root) / "extracted" / "landcover.ai.v1"
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".extracted"
    }
    assert files == archive.members
    manifest = json.loads((raw(root) / layout.SOURCE_FILE).read_text())
    assert [s["md5"] for s in manifest["sources"]] == [archive.md5]


def download_stage(root: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the stage; its exit code and all it printed (Prefect logs go to either stream)."""
    done = run_stage(root, "download", DATASET, env=env)
    return done.returncode, done.stdout + done.stderr


# --- the dataset download stage ----------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.resumed
def test_a_connection_dropped_mid_file_is_resumed_with_a_range_request(
    server: FileServer, archive: ServedArchive, env: dict[str, str], tmp_path: Path
) -> None:
    root = make_project(tmp_path, f"{server.url}/{ARCHIVE}", archive.md5)
    server.faults = ["drop"]
    code, output = download_stage(root, env)
    assert code == 0, output[-3000:]
    (first, first_range), (second, second_range) = server.requests
    assert first == second == ARCHIVE
    assert first_range is None
    assert second_range is not None
    received = int(second_range.removeprefix("bytes=").rstrip("-"))
    assert 0 < received < len(archive.data)  # only the missing tail was asked for
    # The log says what happened: the transfer stopped there and was resumed.
    assert f"connection closed at {received} of {len(archive.data)} bytes" in output
    assert_extracted(root, archive)


@pytest.mark.fault
def test_a_server_error_is_retried_and_the_download_completes(
    server: FileServer, archive: ServedArchive, env: dict[str, str], tmp_path: Path
) -> None:
    root = make_project(tmp_path, f"{server.url}/{ARCHIVE}", archive.md5)
    server.faults = ["500"]
    code, output = download_stage(root, env)
    assert code == 0, output[-3000:]
    assert server.requests == [(ARCHIVE, None), (ARCHIVE, None)]  # the 500, then the retry
    assert "HTTP 500" in output
    assert_extracted(root, archive)


@pytest.mark.fault
def test_wrong_bytes_are_set_aside_and_a_rerun_downloads_afresh(
    server: FileServer, archive: ServedArchive, env: dict[str, str], tmp_path: Path
) -> None:
    url = f"{server.url}/{ARCHIVE}"
    root = make_project(tmp_path, url, archive.md5)
    before = snapshot(root, skip=TRACKING)
    server.faults = ["corrupt"]
    failed = run_stage(root, "download", DATASET, env=env)
    error = one_line_error(failed)
    assert url in error
    assert archive.md5 in error
    assert URL_PARAM in error
    assert "does not match" in error
    assert f"set aside as {raw(root) / 'archives'}/{ARCHIVE}.bad" in error
    assert len(server.requests) == 1  # a checksum error is not retried
    archives = raw(root) / "archives"
    bad = (archives / f"{ARCHIVE}.bad").read_bytes()
    assert len(bad) == len(archive.data)
    assert bad != archive.data
    assert not (archives / ARCHIVE).exists()
    assert not (archives / f"{ARCHIVE}.part").exists()
    assert not list(raw(root).glob("extracted/*.extracting"))  # nothing unpacked from it
    assert_intact(before, root)

    # The server is fixed: the rerun fetches the whole file again, never resuming the bad one.
    server.requests.clear()
    code, output = download_stage(root, env)
    assert code == 0, output[-3000:]
    assert server.requests == [(ARCHIVE, None)]
    assert_extracted(root, archive)
    assert (archives / f"{ARCHIVE}.bad").read_bytes() == bad  # kept for inspection, unused


@pytest.mark.fault
def test_a_404_stops_with_one_line_naming_the_url_and_the_parameter(
    server: FileServer, archive: ServedArchive, env: dict[str, str], tmp_path: Path
) -> None:
    url = f"{server.url}/moved/{ARCHIVE}"
    root = make_project(tmp_path, url, archive.md5)
    before = snapshot(root, skip=TRACKING)
    error = one_line_error(run_stage(root, "download", DATASET, env=env))
    assert url in error
    assert "HTTP 404" in error
    assert URL_PARAM in error
    assert len(server.requests) == 1  # a 404 is not retried
    assert not list((raw(root) / "archives").glob("*"))
    assert_intact(before, root)


@pytest.mark.fault
@pytest.mark.parametrize("offline", ["unresolvable host", "closed port"])
def test_no_network_stops_with_one_line_naming_the_mirror_parameter(
    offline: str, archive: ServedArchive, env: dict[str, str], tmp_path: Path
) -> None:
    # .invalid never resolves (RFC 2606); nothing listens on a port just found free.
    host = "mirror.invalid" if offline == "unresolvable host" else f"127.0.0.1:{free_port()}"
    url = f"http://{host}/{ARCHIVE}"
    root = make_project(tmp_path, url, archive.md5)
    before = snapshot(root, skip=TRACKING)
    error = one_line_error(run_stage(root, "download", DATASET, env=env))
    assert url in error
    assert ("host not found" if offline == "unresolvable host" else "connection refused") in error
    assert f"Set {URL_PARAM} in params.yaml to a mirror or to a local copy" in error
    assert_intact(before, root)


# --- initialisation weights (the weights stage's download) ------------------------------------


@pytest.fixture
def seco_payload(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A small published-style weights file and the tensors it holds."""
    state = {"conv1.weight": torch.arange(48.0).reshape(3, 4, 2, 2), "fc.bias": torch.ones(3)}
    path = tmp_path / "payload.pth"
    torch.save(state, path)
    return path, state


def cache_with_an_earlier_init(tmp_path: Path) -> Path:
    """The weights cache, already holding another init's file (an earlier output)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "resnet50_fmow_rgb_gassl-da43d987.pth").write_bytes(b"an earlier download")
    return cache


def seco_state(cache: Path) -> dict[str, torch.Tensor]:
    state, _ = init_state(
        "seco", "resnet50", weights_file=None, sop_encoder=None, cache_dir=cache, progress=False
    )
    assert state is not None
    return state


@pytest.mark.fault
def test_weights_server_error_is_retried_and_the_file_loads(
    server: FileServer,
    seco_payload: tuple[Path, dict[str, torch.Tensor]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    payload, expected = seco_payload
    spec = serve_as(monkeypatch, server, "seco", payload)
    server.faults = ["500"]
    state = seco_state(tmp_path / "cache")
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert server.requests == [(spec.file_name, None), (spec.file_name, None)]


@pytest.mark.fault
def test_weights_with_wrong_bytes_are_set_aside_and_fetched_afresh(
    server: FileServer,
    seco_payload: tuple[Path, dict[str, torch.Tensor]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    payload, expected = seco_payload
    spec = serve_as(monkeypatch, server, "seco", payload)
    assert spec.file_name is not None
    assert spec.url is not None
    cache = cache_with_an_earlier_init(tmp_path)
    before = snapshot(cache)
    server.faults = ["corrupt"]
    with pytest.raises(WeightsError) as info:
        seco_state(cache)
    assert_intact(before, cache)
    assert isinstance(info.value, ChecksumError)
    assert spec.url in str(info.value)
    assert f"{spec.file_name}.bad" in str(info.value)
    bad = (cache / f"{spec.file_name}.bad").read_bytes()
    assert len(bad) == payload.stat().st_size
    assert bad != payload.read_bytes()
    assert not (cache / spec.file_name).exists()

    server.requests.clear()
    state = seco_state(cache)  # the server is fixed
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert server.requests == [(spec.file_name, None)]  # a whole new file, not the bad one
    assert (cache / spec.file_name).read_bytes() == payload.read_bytes()


@pytest.mark.fault
def test_weights_offline_name_the_local_path_parameter(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url = "http://weights.invalid/resnet50_sentinel2_rgb_seco-018bf397.pth"
    monkeypatch.setitem(INITS, "seco", dataclasses.replace(INITS["seco"], url=url))
    cache = cache_with_an_earlier_init(tmp_path)
    before = snapshot(cache)
    with pytest.raises(WeightsError) as info:
        seco_state(cache)
    message = str(info.value)
    assert "\n" not in message
    assert "host not found" in message
    assert f"offline? download {url} and set finetune.weights_file.seco to its path" in message
    assert_intact(before, cache)
    assert len(list(cache.iterdir())) == 1  # no partial file left behind
