"""pipeline.timing: a stage process records when it started, its work, and when it exited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.timing import TIMINGS_ENV, process_started

SCRIPT = """
import time
from pipeline import timing
timing.record_if_asked()
time.sleep(0.3)
with timing.work("stage"):
    time.sleep(0.5)
"""


def test_this_process_started_before_now_and_after_the_test_session() -> None:
    started = process_started()
    assert started <= time.time()
    assert time.time() - started < 24 * 3600


def test_a_process_records_its_life_and_its_work(tmp_path: Path) -> None:
    target = tmp_path / "timings.jsonl"
    before = time.time()
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", SCRIPT, "some", "args"],
            env={**os.environ, TIMINGS_ENV: str(target)},
            check=True,
        )
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) == 2  # appended, one line per process
    for record in records:
        assert record["argv"][1:] == ["some", "args"]
        assert before - 0.1 <= record["started"] < record["exited"] <= time.time()
        assert 0.5 <= record["work"]["stage"] < record["exited"] - record["started"] - 0.3


def test_without_the_variable_nothing_is_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TIMINGS_ENV}
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
