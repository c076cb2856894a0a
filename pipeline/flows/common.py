"""Prefect conventions shared by the flows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def api_for_subprocesses() -> Iterator[str]:
    """Let spawned task workers report to this process's Prefect API.

    With no ``PREFECT_API_URL``, Prefect runs a temporary server per process, and each worker of a
    process pool would start its own (about 12 s each here). Exporting the running one's URL
    while the pool lives makes the workers join it instead.
    """
    preset = os.environ.get("PREFECT_API_URL")
    if preset:
        yield preset
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
