"""The environment is the lock: every installed distribution, by name and version.

`make` installs requirements/cpu.txt (or the ``LOCK`` it is given, exported as ``SOP_LOCK``)
with ``uv pip sync``; these tests fail when the running interpreter's distributions differ from
it, or when pyproject.toml pins something the locks do not (an edit without ``make lock``).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = (REPO / "requirements" / "cpu.txt", REPO / "requirements" / "cuda.txt")
PROJECT = canonicalize_name("sop-pipeline")  # installed editable from the checkout, not locked
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked_versions(lock: Path) -> dict[str, str]:
    """{canonical name: version} of a compiled requirements file's ``name==version`` lines."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }


def differences(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """What differs, a line each. A pin without a local label accepts the same release with
    one (``torch==2.13.0`` and the installed ``2.13.0+cpu``), as ``==`` does for pip and uv;
    the lock's hash picks the build."""
    lines = [f"{name}: locked {version}, not installed" for name, version in locked.items()]
    lines = [line for line in lines if line.split(":")[0] not in installed]
    for name, version in sorted(installed.items()):
        if name == PROJECT:
            continue
        if name not in locked:
            lines.append(f"{name} {version}: installed, not in the lock")
        elif version not in SpecifierSet(f"=={locked[name]}"):
            lines.append(f"{name}: installed {version}, locked {locked[name]}")
    return sorted(lines)


def direct_pins() -> dict[str, str]:
    """pyproject.toml's runtime and dev requirements, each pinned with ``==``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = {}
    for text in requirements:
        requirement = Requirement(text)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"pyproject.toml: {text} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_installed_environment_is_exactly_the_lock() -> None:
    lock = REPO / os.environ.get("SOP_LOCK", "requirements/cpu.txt")
    found = differences(locked_versions(lock), installed_versions())
    assert not found, (
        f"the environment differs from {lock.relative_to(REPO)} (`make sync` restores it):\n"
        + "\n".join(found)
    )


@pytest.mark.parametrize("lock", LOCKS, ids=lambda path: path.name)
def test_each_lock_holds_every_direct_pin_of_pyproject(lock: Path) -> None:
    locked = locked_versions(lock)
    stale = {name: pin for name, pin in direct_pins().items() if locked.get(name) != pin}
    assert not stale, f"{lock.name} lacks {stale}: run `make lock` after editing pyproject.toml"


def test_a_changed_missing_or_extra_distribution_is_named() -> None:
    locked = {"numpy": "2.4.6", "torch": "2.13.0", "uv": "0.13.9"}
    installed = {"numpy": "2.4.7", "torch": "2.13.0+cpu", "six": "1.17.0", PROJECT: "0.1.0"}
    assert differences(locked, installed) == [
        "numpy: installed 2.4.7, locked 2.4.6",
        "six 1.17.0: installed, not in the lock",
        "uv: locked 0.13.9, not installed",
    ]


def test_the_cpu_lock_pins_no_local_build_and_the_cuda_lock_holds_torchs_cuda_libraries() -> None:
    # The pin names the release; the CPU build is chosen by its hash (README, "Installing").
    assert "+cpu" not in LOCKS[0].read_text()
    cuda = locked_versions(LOCKS[1])
    assert any(name.startswith("nvidia-") for name in cuda)
    assert not any(name.startswith("nvidia-") for name in locked_versions(LOCKS[0]))
