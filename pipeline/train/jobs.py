"""What a training job needs around the engine: its file, its settings, its device, its logger.

A stage's flow writes a job (``PretrainJob``, ``FinetuneJob``: subclasses of ``JobFile``) and
runs it through ``pipeline.train.launch``, in its own process or as torchrun ranks. The jobs'
modules and the launcher both import this one, and it imports neither.
"""

from __future__ import annotations

import json
import math
import resource
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.config import FinetuneParams, Params, PretrainParams
from pipeline.errors import ParamsError
from pipeline.train.engine import EngineSettings

RESULT_FILE = "result.json"
_PATH_FIELDS = ("store_dir", "out_dir", "checkpoint_dir", "init_weights")
JOB_KINDS: dict[str, type[JobFile]] = {}


class JobFile:
    """A job as JSON, tagged with its kind, for ``python -m pipeline.train.launch``: its paths
    as strings, its resolved params as a tree. Each subclass is a kind (``JOB_KINDS``), named by
    its class."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        JOB_KINDS[cls.__name__] = cls

    def write(self, path: Path) -> Path:
        fields = asdict(self)  # type: ignore[call-overload]
        raw = {k: _as_json(v) for k, v in fields.items()}
        path.write_text(json.dumps({"kind": type(self).__name__, **raw}))
        return path


def read_job(path: Path) -> Any:
    """The job a flow wrote to ``path``, of the kind it names."""
    raw = json.loads(path.read_text())
    kind = raw.pop("kind", None)
    if kind not in JOB_KINDS:
        raise ParamsError(f"{path}: job kind {kind!r} is none of {sorted(JOB_KINDS)}")
    for key in _PATH_FIELDS:
        if key in raw:
            raw[key] = Path(raw[key])
    if "params" in raw:
        raw["params"] = Params.model_validate(raw["params"])
    return JOB_KINDS[kind](**raw)


def _as_json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Params):
        return value.model_dump(mode="json")
    return value


def resolve_device(params: Params) -> str:
    wanted = params.compute.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ParamsError("compute.device: cuda requested but no GPU is visible")
    return wanted


def resolve_processes(params: Params) -> int:
    """DDP processes: ``compute.devices``, or every visible GPU (1 on CPU) for auto."""
    if params.compute.devices != "auto":
        return params.compute.devices
    return max(1, torch.cuda.device_count()) if resolve_device(params) == "cuda" else 1


def engine_settings(
    params: Params,
    checkpoint_dir: Path,
    section: PretrainParams | FinetuneParams | None = None,
    best_metric: str | None = None,
    seed: int | None = None,
) -> EngineSettings:
    """The engine's settings from a params section; ``seed`` (a grid cell's) overrides
    ``params.seed``."""
    p, compute = section or params.pretrain, params.compute
    return EngineSettings(
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr_backbone=p.lr_backbone,
        lr_head=p.lr_head,
        weight_decay=p.weight_decay,
        warmup_epochs=p.warmup_epochs,
        seed=params.seed if seed is None else seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=compute.checkpoint_every,
        compile=compute.compile,
        num_workers=compute.loader_workers,
        progress=compute.progress,
        device=resolve_device(params),
        best_metric=best_metric,
    )


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def epoch_logger(tracking_uri: str | None, run_id: str | None) -> Any:
    if not run_id:
        return None
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    def log(epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(k, v, now, epoch)
            for k, v in metrics.items()
            if k != "epoch" and not math.isnan(v)
        ]
        client.log_batch(run_id, metrics=batch)

    return log
