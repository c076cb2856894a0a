"""Downloading and hashing files, for datasets and weights alike.

A download streams into ``<name>.part`` and resumes it with an HTTP Range request, so a dropped
connection costs only what was not yet received. The file is checked (an md5, or the caller's
verifier) before it is renamed into place; one that fails is set aside as ``<name>.bad`` and
never used. One call makes one attempt: callers retry :class:`TransientDownloadError` with
backoff and give up at once on anything else.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import ChecksumError, DownloadError, TransientDownloadError

CHUNK = 1 << 20
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
