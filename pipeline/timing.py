"""Where a stage invocation's time goes (``benchmarks/demo_stages.py`` reads it).

With ``SOP_TIMINGS`` naming a file, every stage process appends one JSON line as it exits: its
arguments, when the process started (by the kernel's clock, so the interpreter's own start-up
counts), the seconds spent in the body of the stage's MLflow run (the stage's work: reading,
training, writing its outputs) and when it exited. The rest of the process's life (interpreter
start, imports, Prefect's flow and task runs, opening and closing the MLflow run) is the
orchestration overhead of that invocation.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMINGS_ENV = "SOP_TIMINGS"
# Set by a stage command that hands its work to the stage host: when the command started.
STARTED_ENV = "SOP_STAGE_STARTED"
_work: dict[str, float] = {}


def process_started() -> float:
    """Epoch seconds at which this process started (to ~10 ms; Linux), else now."""
    try:
        # Field 22 of /proc/self/stat (after the parenthesised name): start, in ticks since boot.
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


@contextmanager
def work(stage: str) -> Iterator[None]:
    """Count the enclosed seconds as ``stage``'s work."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _work[stage] = _work.get(stage, 0.0) + time.perf_counter() - started


def _write(path: Path, started: float) -> None:
    record = {
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "started": round(started, 3),
        "exited": round(time.time(), 3),
        "work": {stage: round(seconds, 3) for stage, seconds in _work.items()},
    }
    with open(path, "a") as handle:  # one short line per process: appends do not interleave
        handle.write(json.dumps(record) + "\n")


def record_if_asked() -> None:
    """Write this process's line at exit when ``SOP_TIMINGS`` is set (called by stage_main)."""
    target = os.environ.get(TIMINGS_ENV)
    if target:
        # A stage forked by the stage host counts from when its command started.
        started = os.environ.get(STARTED_ENV)
        atexit.register(_write, Path(target), float(started) if started else process_started())
