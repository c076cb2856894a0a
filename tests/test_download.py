from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import params_from_mapping
from pipeline.data.catalog import get_dataset
from pipeline.data.download import local_path, safe_extract, write_md5_file
from pipeline.errors import (
    ChecksumError,
    DataError,
    DownloadError,
    ParamsError,
    TransientDownloadError,
)
from pipeline.flows.data import Location, fetch_archive, resolve_locations
from pipeline.transfer import download
from tests.servers import FileServer

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    folder = tmp_path_factory.mktemp("served")
    (folder / "a.zip").write_bytes(PAYLOAD)
    srv = FileServer(folder)
    yield srv
    srv.close()


def test_download_verifies_and_renames(server: FileServer, tmp_path: Path) -> None:
    target = download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.zip.part").exists()
    download(f"{server.url}/a.zip", target, MD5, progress=False)  # present and valid: no request
    assert len(server.requests) == 1


def test_dropped_connection_is_resumed_with_range(server: FileServer, tmp_path: Path) -> None:
    server.faults = ["drop"]
    with pytest.raises(TransientDownloadError, match="resumed on retry"):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    partial = (tmp_path / "a.zip.part").stat().st_size
    assert 0 < partial < len(PAYLOAD)
    download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    assert server.requests == [("a.zip", None), ("a.zip", f"bytes={partial}-")]
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_server_error_is_transient_and_404_is_not(server: FileServer, tmp_path: Path) -> None:
    server.faults = ["500"]
    with pytest.raises(TransientDownloadError, match="HTTP 500"):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(f"{server.url}/missing.zip", tmp_path / "m.zip", MD5, progress=False)
    assert not isinstance(info.value, TransientDownloadError)


def test_checksum_mismatch_sets_the_file_aside(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="does not match the expected"):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", "0" * 32, progress=False)
    assert not (tmp_path / "a.zip").exists()
    assert (tmp_path / "a.zip.bad").read_bytes() == PAYLOAD


def test_offline_names_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"params\.yaml"):
        download("http://127.0.0.1:9/a.zip", tmp_path / "a.zip", MD5, progress=False)


def test_local_paths_and_file_urls(tmp_path: Path) -> None:
    assert local_path("archive/x.zip", tmp_path) == tmp_path / "archive/x.zip"
    assert local_path(f"file://{tmp_path}/x.zip", Path("/")) == tmp_path / "x.zip"
    assert local_path("https://example.org/x.zip", tmp_path) is None


def make_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../evil.txt", "escapes the target folder"),
        ("a/../../evil.txt", "escapes the target folder"),
        ("/etc/evil.txt", "absolute path"),
        (symlink_member("link", "/etc/passwd"), "symbolic link"),
    ],
)
def test_extraction_refuses_members_outside_the_target(
    tmp_path: Path, member: zipfile.ZipInfo | str, problem: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", [("ok.txt", b"fine"), (member, b"x")])
    with pytest.raises(DataError, match=problem):
        safe_extract(archive, tmp_path / "out", max_unpacked_bytes=10**9)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extraction_refuses_bombs_and_oversized_archives(tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", [("zeros", b"\0" * 50_000_000)])
    with pytest.raises(DataError, match="zip bomb"):
        safe_extract(bomb, tmp_path / "out", max_unpacked_bytes=10**12)
    big = make_zip(tmp_path / "big.zip", [("data", bytes(range(256)) * 4000)])
    with pytest.raises(DataError, match="max_unpacked_gb"):
        safe_extract(big, tmp_path / "out", max_unpacked_bytes=1000)


def test_truncated_zip_is_named(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "w.zip", [("a.txt", bytes(range(256)) * 100)])
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.zip: corrupt or truncated zip"):
        safe_extract(cut, tmp_path / "out", max_unpacked_bytes=10**9)


def test_extraction_is_skipped_when_done_and_redone_when_the_archive_changes(
    tmp_path: Path,
) -> None:
    archive = make_zip(tmp_path / "a.zip", [("a.txt", b"one")])
    out = safe_extract(archive, tmp_path / "out", max_unpacked_bytes=10**9)
    (out / "a.txt").write_text("edited")
    safe_extract(archive, out, max_unpacked_bytes=10**9)
    assert (out / "a.txt").read_text() == "edited"  # same archive: left alone
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.txt", "two, longer")
    archive.write_bytes(buffer.getvalue())
    safe_extract(archive, out, max_unpacked_bytes=10**9)
    assert (out / "a.txt").read_text() == "two, longer"


def landcoverai_from(tmp_path: Path, **source: object) -> list[Location]:
    data = params_from_mapping({"data": {"sources": {"landcoverai": source}}}).data
    info = get_dataset("landcoverai", data, tmp_path)
    return resolve_locations(info, data.source("landcoverai"), tmp_path, "landcoverai")


def test_an_archive_is_checked_against_the_md5_its_producer_recorded(tmp_path: Path) -> None:
    archive = tmp_path / "landcover.ai.v1.zip"
    archive.write_bytes(PAYLOAD)
    write_md5_file(tmp_path / "landcover.ai.v1.zip.md5", {archive.name: MD5})
    assert (tmp_path / "landcover.ai.v1.zip.md5").read_text() == f"{MD5}  landcover.ai.v1.zip\n"
    (location,) = landcoverai_from(
        tmp_path, url="landcover.ai.v1.zip", md5_file="landcover.ai.v1.zip.md5"
    )
    assert location.path == archive
    assert location.md5 == MD5  # the record's, not the catalog's official md5
    fetch_archive.fn(location, tmp_path / "archives", 5.0, "data.sources.landcoverai.url")
    archive.write_bytes(PAYLOAD[::-1])
    with pytest.raises(ChecksumError, match=f"does not match the expected {MD5}.*md5_file"):
        fetch_archive.fn(location, tmp_path / "archives", 5.0, "data.sources.landcoverai.url")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (None, "not found"),
        ("not a digest\n", ":1: expected '<md5>  <file name>'"),
        (f"{MD5}  other.zip\n", "no md5 of landcover.ai.v1.zip"),
    ],
)
def test_a_missing_malformed_or_unrelated_md5_record_names_the_parameter(
    tmp_path: Path, record: str | None, message: str
) -> None:
    (tmp_path / "landcover.ai.v1.zip").write_bytes(PAYLOAD)
    if record is not None:
        (tmp_path / "sums.md5").write_text(record)
    with pytest.raises(DataError, match=f"{message}.*data.sources.landcoverai.md5_file"):
        landcoverai_from(tmp_path, url="landcover.ai.v1.zip", md5_file="sums.md5")


def test_md5_and_md5_file_are_not_both_set() -> None:
    with pytest.raises(ParamsError, match="set md5 or md5_file, not both"):
        params_from_mapping(
            {"data": {"sources": {"landcoverai": {"md5": MD5, "md5_file": "sums.md5"}}}}
        )
