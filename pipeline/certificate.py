"""Which machine a pipeline root's dvc.lock certifies.

The demo's committed ``dvc.lock`` is reproduced hash for hash by ``make demo`` on the kind of
machine that wrote it. The stages that compute in floating point (training, evaluation, the
synthetic painter's filters) give other bits under other kernels: torch, oneDNN, MKL and OpenCV
pick theirs by the CPU's instruction set at run time (measured: AVX2 and AVX-512 kernels train
the demo's models to different weights), and reductions also follow the thread count. So the
lock is kept with the fingerprint of the machine that wrote it, in ``certified-on.json`` beside
it, and a machine with another fingerprint knows that a rewritten lock is not a regression.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from pipeline.errors import DataError
from pipeline.files import write_text

CERTIFICATE_FILE = "certified-on.json"


def cpu_model() -> str:
    """The CPU's vendor and model name as the kernel reports them."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = " ".join(v for v in (fields.get("vendor_id"), fields.get("model name")) if v)
    if "cpu family" in fields and "model" in fields:  # one name covers several generations
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name or platform.processor() or "unknown"


def fingerprint() -> dict[str, str | int]:
    """What decides the floating-point bits of the demo's outputs on this machine."""
    import torch

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }


def recorded(root: Path) -> dict[str, str | int] | None:
    path = root / CERTIFICATE_FILE
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not JSON ({exc}); rewrite it with `sop certificate --write`"
        ) from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a JSON object; rewrite it with `sop certificate --write`")
    return value


def record(root: Path) -> Path:
    path = root / CERTIFICATE_FILE
    write_text(path, json.dumps(fingerprint(), indent=2) + "\n")
    return path
