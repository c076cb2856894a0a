"""Fetch an archive (URL or local path), verify it, and extract it safely.

A download streams into ``<name>.part`` and resumes it with an HTTP Range request, so a dropped
connection costs only what was not yet received. The md5 is checked before anything is
extracted; a file that fails it is set aside as ``<name>.bad`` and never used. Only a verified
file is renamed into place. One call makes one attempt: the caller (the download flow's task)
retries :class:`TransientDownloadError` with backoff and gives up at once on anything else.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import socket
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.errors import ChecksumError, DataError, DownloadError, TransientDownloadError
from pipeline.files import write_text

CHUNK = 1 << 20
EXTRACTED_MARKER = ".extracted"
# Imagery in these archives is already compressed (TIFF deflate/LZW, PNG, JPEG), so a large
# member that deflates better than this is a bomb, not data. Deflate itself tops out near 1030:1.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_MIN_BYTES = 10_000_000


# Checks a file (a download's .part, or a cached copy) before it is used; raises ChecksumError.
# The string says where the file came from, for the message.
Verifier = Callable[[Path, str], None]


def md5_of(path: Path, progress: bool = False) -> str:
    return file_digest(path, "md5", progress)


def file_digest(path: Path, algorithm: str = "md5", progress: bool = False) -> str:
    """The hex digest of a file, read in chunks (archives and weights are large)."""
    digest = hashlib.new(algorithm)
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"{algorithm} {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


MD5SUM_LINE = re.compile(r"([0-9a-fA-F]{32}) [ *](.+)")


def write_md5_file(path: Path, digests: dict[str, str]) -> None:
    """Record archives' md5s as md5sum does (``md5sum -c`` checks them)."""
    write_text(path, "".join(f"{md5}  {name}\n" for name, md5 in sorted(digests.items())))


def read_md5_file(path: Path, param: str) -> dict[str, str]:
    """{file name: md5} of an md5sum-style file; a missing or malformed one names ``param``."""
    if not path.is_file():
        raise DataError(f"{path}: not found ({param})")
    digests = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = MD5SUM_LINE.fullmatch(line.strip())
        if match is None:
            raise DataError(f"{path}:{number}: expected '<md5>  <file name>' ({param})")
        digests[PurePosixPath(match.group(2)).name] = match.group(1).lower()
    return digests


def local_path(location: str, base: Path) -> Path | None:
    """The local file a source location names (a path or a file:// URL), or None for a URL."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    path = Path(location).expanduser()
    return path if path.is_absolute() else base / path


def verify(path: Path, expected_md5: str | None, what: str) -> None:
    """Raise ChecksumError (naming ``what``, the parameter to fix) unless ``path`` matches."""
    if expected_md5 is None:
        return
    actual = md5_of(path, progress=True)
    if actual != expected_md5:
        raise ChecksumError(
            f"{path}: md5 {actual} does not match the expected {expected_md5} ({what})"
        )


def _http_error(url: str, exc: Exception, param_name: str) -> DownloadError:
    """The error for a failed request; those a retry cannot fix name ``param_name``, the
    parameter that takes a mirror or a local copy instead."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code >= 500 or exc.code in (408, 429):
            return TransientDownloadError(f"{url}: server answered HTTP {exc.code}")
        return DownloadError(
            f"{url}: server answered HTTP {exc.code} {exc.reason}; set {param_name} in "
            "params.yaml to a mirror or a local copy"
        )
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.gaierror):
        return DownloadError(
            f"{url}: host not found; offline? Set {param_name} in params.yaml to a mirror "
            "or to a local copy"
        )
    if isinstance(reason, ConnectionRefusedError):
        return DownloadError(
            f"{url}: connection refused; offline? Set {param_name} in params.yaml to a mirror "
            "or to a local copy"
        )
    return TransientDownloadError(f"{url}: transfer failed ({reason})")


def download(
    url: str,
    target: Path,
    expected_md5: str | None,
    *,
    timeout_s: float = 60.0,
    param_name: str = "data.sources.<dataset>.url",
    progress: bool = True,
    verifier: Verifier | None = None,
) -> Path:
    """Download ``url`` to ``target`` (resuming ``target.part``), verified, renamed atomically.

    ``verifier`` replaces the md5 check (pass ``expected_md5=None``): it raises
    :class:`ChecksumError` for a file that is not the expected one (weights pin a SHA-256 prefix).
    """
    if _cached(target, expected_md5, verifier):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    _fetch(url, part, target.name, timeout_s, param_name, progress)
    _verify_part(part, target, url, expected_md5, param_name, verifier)
    os.replace(part, target)
    return target


def _cached(target: Path, expected_md5: str | None, verifier: Verifier | None) -> bool:
    """Whether ``target`` already holds the expected file; a stale one is set aside as .bad."""
    if not target.exists():
        return False
    if verifier is not None:
        try:
            verifier(target, f"cached at {target}")
            return True
        except ChecksumError:
            pass
    elif expected_md5 is None or md5_of(target) == expected_md5:
        return True
    # A stale file from an earlier source: set it aside, never use it.
    target.replace(target.with_name(target.name + ".bad"))
    return False


def _fetch(
    url: str, part: Path, label: str, timeout_s: float, param_name: str, progress: bool
) -> None:
    """Append the rest of ``url`` to ``part`` (an HTTP Range request when part holds some)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sop-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # the part file already holds everything: it is verified next
        raise _http_error(url, exc, param_name) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _http_error(url, exc, param_name) from None
    with response:
        resumed = bool(have) and response.status == 206
        have = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        try:
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=label,
                    disable=not progress,
                ) as bar,
            ):  # fmt: skip
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except (OSError, urllib.error.URLError) as exc:
            raise TransientDownloadError(
                f"{url}: connection lost after {part.stat().st_size} bytes ({exc}); "
                "the partial file is kept and resumed on retry"
            ) from None
    if total is not None and part.stat().st_size < total:
        raise TransientDownloadError(
            f"{url}: connection closed at {part.stat().st_size} of {total} bytes; resumed on retry"
        )


def _verify_part(
    part: Path,
    target: Path,
    url: str,
    expected_md5: str | None,
    param_name: str,
    verifier: Verifier | None,
) -> None:
    """Check the downloaded bytes; a wrong file is set aside as .bad, never used."""
    try:
        if verifier is not None:
            verifier(part, f"downloaded from {url}; set {param_name}")
        else:
            verify(part, expected_md5, f"downloaded from {url}; set {param_name} or its md5")
    except ChecksumError as exc:
        bad = target.with_name(target.name + ".bad")
        part.replace(bad)
        if verifier is not None:  # its message already names the .bad file
            raise
        # The message names the .part file, which is gone: say where the bytes lie now.
        raise ChecksumError(f"{exc}; set aside as {bad}, never used") from None


def archive_stamp(archive: Path) -> str:
    """Identifies the archive a folder was extracted from: a changed archive is re-extracted.

    By content, not modification time: an archive written again with the same bytes (the
    demo's synthetic one, a fresh clone) leaves the extracted folder, and its DVC hash, as is.
    """
    return f"{archive.name} {archive.stat().st_size} md5:{md5_of(archive)}"


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts or "\\" in name:
        return "path escapes the target folder"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if info.file_size > RATIO_CHECK_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        return f"compression ratio {info.file_size // info.compress_size}:1 (zip bomb?)"
    return None


def _extract_checked(
    archive: Path,
    staging: Path,
    max_unpacked_bytes: int,
    on_member: Callable[[int], None] | None,
) -> None:
    """Check every member, then extract them all into ``staging`` (created afresh)."""
    member: str | None = None
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = 0
            for info in members:
                problem = _member_problem(info)
                if problem:
                    raise DataError(f"{archive}: refused member {info.filename!r}: {problem}")
                total += info.file_size
            if total > max_unpacked_bytes:
                raise DataError(
                    f"{archive}: would unpack to {total / 1e9:.3g} GB, over the "
                    f"{max_unpacked_bytes / 1e9:.3g} GB limit (data.download.max_unpacked_gb)"
                )
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"extract {archive.name}"
            ) as bar:
                for info in members:
                    member = info.filename
                    zf.extract(info, staging)
                    bar.update(info.file_size)
                    if on_member is not None:
                        on_member(info.file_size)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: corrupt or truncated zip ({exc})") from None
    except (zlib.error, lzma.LZMAError, EOFError) as exc:
        # A member's compressed bytes are damaged; the zip's directory was readable.
        raise DataError(
            f"{archive}: member {member!r} is corrupt ({exc}); fetch the archive again"
        ) from None
    except NotImplementedError as exc:  # e.g. Deflate64, which zipfile cannot read
        raise DataError(
            f"{archive}: cannot extract member {member!r} ({exc}); unpack the archive with "
            "another tool and give its folder as the dataset's source url"
        ) from None
    except zipfile.LargeZipFile as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None


def safe_extract(
    archive: Path,
    target: Path,
    *,
    max_unpacked_bytes: int,
    on_member: Callable[[int], None] | None = None,
) -> Path:
    """Extract a zip into ``target`` after checking every member; atomic at the folder level:
    a refused or failed extraction leaves an earlier ``target`` as it was and no partial copy."""
    marker = target / EXTRACTED_MARKER
    stamp = archive_stamp(archive)
    if marker.exists() and marker.read_text() == stamp:
        return target
    staging = target.with_name(target.name + ".extracting")
    try:
        _extract_checked(archive, staging, max_unpacked_bytes, on_member)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / EXTRACTED_MARKER).write_text(stamp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target
