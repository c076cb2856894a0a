"""The Dockerfile cannot be built here (no Docker engine): parse it and check that it installs
the CUDA lock, as `make install` does, on a CUDA base that matches the locked torch build."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.env import TELEMETRY_OFF

REPO = Path(__file__).resolve().parents[1]
# The CUDA version of torch's default PyPI build (the one `pip install torch==X` resolves to).
TORCH_DEFAULT_CUDA = {"2.13.0": "13.0"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    parsed = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            parsed.append((keyword.upper(), rest.strip()))
    return parsed


def cuda_lock() -> dict[str, str]:
    """{name: version} of the lock the image installs."""
    pins = {}
    for line in (REPO / "requirements" / "cuda.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_the_cuda_base_matches_the_locked_torch_build() -> None:
    (base,) = [args for keyword, args in instructions() if keyword == "FROM"]
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+", base)
    assert match, base
    lock = cuda_lock()
    assert match.group(1) == TORCH_DEFAULT_CUDA[lock["torch"]]
    # The CUDA runtime the lock's torch wheels bring is the base image's release.
    assert lock["nvidia-cuda-runtime"].startswith(match.group(1) + ".")


def test_it_installs_the_cuda_lock_the_way_make_does() -> None:
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert re.search(r"make install VENV=\S+ LOCK=requirements/cuda\.txt(\s|$)", runs)
    assert "pip install" not in runs, "every distribution comes from the lock"
    copied = " ".join(args for keyword, args in instructions() if keyword == "COPY")
    for needed in ("Makefile", "pyproject.toml", "requirements", "pipeline"):
        assert needed in copied


def test_telemetry_off_non_root_and_dvc_repro_as_the_entry() -> None:
    parsed = instructions()
    env = " ".join(args for keyword, args in parsed if keyword == "ENV")
    for key, value in TELEMETRY_OFF.items():
        assert f"{key}={value}" in env
    users = [args for keyword, args in parsed if keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    assert parsed[-1] == ("CMD", '["dvc", "repro"]')
