"""Dataset archives: their recorded md5s, where a source location points, and safe extraction.

Fetching and hashing (resumable, verified before use) live in :mod:`pipeline.transfer`, which
the weights share. Nothing is extracted before its archive's md5 is checked.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.errors import DataError
from pipeline.files import write_text
from pipeline.transfer import md5_of

EXTRACTED_MARKER = ".extracted"
# Imagery in these archives is already compressed (TIFF deflate/LZW, PNG, JPEG), so a large
# member that deflates better than this is a bomb, not data. Deflate itself tops out near 1030:1.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_MIN_BYTES = 10_000_000


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
