from __future__ import annotations

import hashlib
import io
import stat
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.data.download import download, local_path, safe_extract
from pipeline.errors import ChecksumError, DataError, DownloadError, TransientDownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """A real HTTP server on 127.0.0.1 that honours Range and can misbehave on request."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.headers.get("Range"))
                if self.path == "/missing.zip":
                    self.send_error(404)
                    return
                if server.mode == "error500":
                    server.mode = "ok"
                    self.send_error(500)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "drop":
                    server.mode = "ok"
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def test_download_verifies_and_renames(server: Server, tmp_path: Path) -> None:
    target = download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.zip.part").exists()
    download(f"{server.url}/a.zip", target, MD5, progress=False)  # present and valid: no request
    assert len(server.requests) == 1


def test_dropped_connection_is_resumed_with_range(server: Server, tmp_path: Path) -> None:
    server.mode = "drop"
    with pytest.raises(TransientDownloadError, match="resumed on retry"):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    partial = (tmp_path / "a.zip.part").stat().st_size
    assert 0 < partial < len(PAYLOAD)
    download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    assert server.requests == [None, f"bytes={partial}-"]
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_server_error_is_transient_and_404_is_not(server: Server, tmp_path: Path) -> None:
    server.mode = "error500"
    with pytest.raises(TransientDownloadError, match="HTTP 500"):
        download(f"{server.url}/a.zip", tmp_path / "a.zip", MD5, progress=False)
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(f"{server.url}/missing.zip", tmp_path / "m.zip", MD5, progress=False)
    assert not isinstance(info.value, TransientDownloadError)


def test_checksum_mismatch_sets_the_file_aside(server: Server, tmp_path: Path) -> None:
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
