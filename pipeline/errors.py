"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: the message names the file or parameter to fix."""


class ParamsError(PipelineError):
    """params.yaml (or an override) is missing, malformed or holds an impossible value."""


class DataError(PipelineError):
    """An input file is missing, corrupt or not what the dataset's layout promises."""


class DownloadError(PipelineError):
    """A source could not be fetched; retrying will not help (404, offline, bad checksum)."""


class TransientDownloadError(DownloadError):
    """A source failed in a way a retry may fix (connection dropped, 5xx, timeout)."""


class ChecksumError(DownloadError):
    """A file's checksum differs from the one pinned in the catalog or params."""


class DiskFullError(PipelineError):
    """A write ran out of space (or quota); what was written before it is intact."""


class CorruptCheckpointError(DataError):
    """A checkpoint is unreadable, holds more than tensors, or its bytes differ from the digest
    written with it."""
