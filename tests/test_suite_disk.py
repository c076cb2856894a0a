"""The suite's disk use stays bounded: a passing test's tmp_path is removed as it ends.

The whole suite writes about 14 GB (DVC caches, checkpoints, archives); kept until the session
ended, it filled a CI machine's disk. The two tests run in file order."""

from __future__ import annotations

from pathlib import Path

import pytest

_written: list[Path] = []


def test_a_passing_test_writes_into_its_tmp_path(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.bin").write_bytes(bytes(1 << 20))
    _written.append(tmp_path)


def test_the_passing_tests_tmp_path_is_gone_after_it() -> None:
    if not _written:
        pytest.skip("runs after test_a_passing_test_writes_into_its_tmp_path")
    assert not _written[0].exists()
