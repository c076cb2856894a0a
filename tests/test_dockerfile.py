"""The Dockerfile cannot be built here (no registry access for images): parse it and check that
it installs exactly pyproject's pins on a CUDA base that matches the pinned torch build."""

from __future__ import annotations

import re
import tomllib
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


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def test_the_cuda_base_matches_the_pinned_torch_build() -> None:
    (base,) = [args for keyword, args in instructions() if keyword == "FROM"]
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+", base)
    assert match, base
    assert match.group(1) == TORCH_DEFAULT_CUDA[pyproject_pins()["torch"]]


def test_it_installs_the_project_with_its_pins_and_nothing_pinned_otherwise() -> None:
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert re.search(r"pip install (-e )?\.(\s|$)", runs), "the project itself is installed"
    pins = pyproject_pins()
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", runs):
        assert pins.get(name.lower()) == version, f"{name}=={version} differs from pyproject"
    copied = " ".join(args for keyword, args in instructions() if keyword == "COPY")
    assert "pyproject.toml" in copied


def test_telemetry_off_non_root_and_dvc_repro_as_the_entry() -> None:
    parsed = instructions()
    env = " ".join(args for keyword, args in parsed if keyword == "ENV")
    for key, value in TELEMETRY_OFF.items():
        assert f"{key}={value}" in env
    users = [args for keyword, args in parsed if keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    assert parsed[-1] == ("CMD", '["dvc", "repro"]')
