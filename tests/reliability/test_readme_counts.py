"""The README's reliability counts are the suite's: each is the number of collected test cases
carrying its mark, so adding a case without updating the README fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = {"fault": "Faults injected", "bad_input": "Bad inputs tried", "resumed": "Runs resumed"}


def _collected(mark: str) -> int:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            mark,
            "tests/reliability",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sum("::" in line for line in done.stdout.splitlines())


def _readme_count(label: str) -> int:
    found = re.search(rf"^\| {label} \| (\d+) \|", (REPO / "README.md").read_text(), re.M)
    assert found, f"README.md: no '| {label} | N |' row in the reliability section"
    return int(found.group(1))


@pytest.mark.parametrize("mark", list(ROWS))
def test_the_readme_count_is_the_number_of_marked_cases(mark: str) -> None:
    collected = _collected(mark)
    assert collected > 0
    assert _readme_count(ROWS[mark]) == collected
