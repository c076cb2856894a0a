"""The training process: ``python -m pipeline.train.launch JOB.json``, alone or as torchrun ranks.

A stage's flow writes a job file and runs it here, in its own process for one device or
through ``torchrun --nproc_per_node N -m pipeline.train.launch JOB`` for DDP. The main rank
logs per-epoch metrics to the flow's MLflow run and writes the job's outputs; the flow then
reads them back. Keeping the rank code free of Prefect lets a flow stay one process that
orchestrates, whatever the number of training processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.train import distributed
from pipeline.train.finetune import FinetuneJob
from pipeline.train.jobs import read_job
from pipeline.train.pretrain import PretrainJob

JOBS = (PretrainJob, FinetuneJob)  # importing them registers their kinds with read_job


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeline.train.launch JOB.json", file=sys.stderr)
        return 2
    context = distributed.from_environment()
    try:
        job = read_job(Path(args[0]))
        job.run()
    finally:
        distributed.shutdown(context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
