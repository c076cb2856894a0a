"""Process environment shared by every entry point: telemetry off, state kept inside the project.

Set before mlflow, prefect, dvc or albumentations are imported: several of them read these at
import time (albumentations calls the package index otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import layout

TELEMETRY_OFF: dict[str, str] = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def apply_env_defaults(root: Path | None = None) -> None:
    """Turn telemetry off; keep Prefect and DVC state under ``root`` unless already set."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    if root is not None:
        state = layout.state_dir(root).resolve()
        os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
        # Prefect creates its home without parents and then fails to open its database.
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state / "dvc-site-cache"))
