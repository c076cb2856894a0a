"""Job files: what a flow writes and ``python -m pipeline.train.launch`` reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_params
from pipeline.errors import ParamsError
from pipeline.train.finetune import FinetuneJob
from pipeline.train.jobs import JOB_KINDS, read_job
from pipeline.train.pretrain import PretrainJob

ROOT = Path(__file__).resolve().parents[1]


def test_each_kind_comes_back_as_it_was_written(tmp_path: Path) -> None:
    params = load_params(ROOT / "demo" / "params.yaml", ["finetune.epochs=7"])
    jobs = [
        PretrainJob(params, "resnet_demo", tmp_path / "s", tmp_path / "o", tmp_path / "c"),
        FinetuneJob(
            params, "resnet_demo", "sop", 0.25, 3, tmp_path / "w.safetensors",
            tmp_path / "s", tmp_path / "o", tmp_path / "c", "sqlite:///m.db", "run",
        ),
    ]  # fmt: skip
    assert set(JOB_KINDS) >= {"PretrainJob", "FinetuneJob"}
    for job in jobs:
        assert read_job(job.write(tmp_path / "job.json")) == job


@pytest.mark.parametrize("kind", [None, "EvaluateJob"])
def test_a_job_file_of_no_known_kind_is_refused_naming_the_file(
    tmp_path: Path, kind: str | None
) -> None:
    raw = {"params": {}, "backbone": "resnet_demo", "store_dir": "s", "out_dir": "o"}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(raw if kind is None else {"kind": kind, **raw}))
    with pytest.raises(ParamsError, match=r"job\.json: job kind .* is none of"):
        read_job(path)
