"""benchmarks/gpu_check.py: its CPU smoke run end to end, without the packages the GPU machine
lacks, and its bookkeeping (a failing item, the budget, the wheels; without CUDA:
tests/test_bench_gpu.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ABSENT = "rasterio,mlflow,prefect,dvc"  # on the GPU machine, and not carried


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check as module

    return module


def run_script(*args: str, absent: str = ABSENT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOP_ABSENT_PACKAGES": absent, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_the_packages_the_gpu_machine_lacks_are_refused() -> None:
    code = "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; import rasterio"
    env = {**os.environ, "SOP_ABSENT_PACKAGES": ABSENT}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "absent on the GPU machine" in done.stderr


@pytest.mark.slow
def test_smoke_run_passes_every_item_without_the_absent_packages(tmp_path: Path) -> None:
    out, raw, work = tmp_path / "results.md", tmp_path / "check.json", tmp_path / "work"
    done = run_script("--smoke", "--out", str(out), "--json", str(raw), "--work", str(work))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(raw.read_text())
    items = {item["name"]: item for item in results["items"]}
    assert {item["status"] for item in items.values()} == {"pass"}, done.stdout[-4000:]
    for name in (
        "bf16 autocast",
        "channels_last",
        "fused AdamW",
        "torch.compile (aot_eager)",
        "SOP sampler on the device",
        "checkpoint saved and resumed on the device",
        "DDP (gloo) under torchrun",
        "throughput pretrain-vits14",
        "throughput pretrain-resnet50",
        "throughput finetune-vits14",
        "throughput finetune-resnet50",
        "grid cell through the jobs (pretrain, weights, fine-tune, evaluate)",
        "paper grid GPU-hours at the measured rates",
    ):
        assert name in items, sorted(items)
    resume = items["checkpoint saved and resumed on the device"]["figures"]
    assert resume["resumed_from"] == 2
    assert resume["loss"] == resume["uninterrupted"]
    assert items["DDP (gloo) under torchrun"]["figures"]["backend"] == "gloo"
    cell = json.loads((work / "cell" / "cell.json").read_text())
    assert set(cell) == {"pretrain", "weights", "finetune", "evaluate"}
    assert 0.0 <= cell["evaluate"]["test_miou"] <= 1.0
    rows = results["throughput"]["rows"]
    assert {(row["case"], row["mode"]) for row in rows} == {
        (case, mode)
        for case in ("pretrain-vits14", "pretrain-resnet50", "finetune-vits14", "finetune-resnet50")
        for mode in ("optimised", "eager")
    }
    kinds = [
        job["kind"]
        for job in items["paper grid GPU-hours at the measured rates"]["figures"]["jobs"]
    ]
    assert (kinds.count("pretrain"), kinds.count("finetune"), kinds.count("evaluate")) == (
        8,
        90,
        90,
    )
    text = out.read_text()
    assert "## GPU check (`benchmarks/gpu_check.py`, `make gpu-check`)" in text
    assert "| torch.compile (aot_eager) | PASS |" in text
    assert "## GPU: training throughput" in text
    assert "### The paper grid at these rates" in text


def test_a_failing_item_is_reported_and_the_next_still_runs(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    check = gpu_check.Check(gpu_check.SMOKE_SCALE, tmp_path, budget_s=100.0)

    def broken(item: object) -> None:
        raise RuntimeError("the worker exited with 1")

    def fine(item: object) -> None:
        item.status = "pass"  # type: ignore[attr-defined]

    failed = check.item("broken", 0.0, broken)
    passed = check.item("fine", 0.0, fine)
    assert (failed.status, failed.detail) == ("fail", "RuntimeError: the worker exited with 1")
    assert passed.status == "pass"


def test_an_item_that_would_not_fit_the_budget_is_skipped(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    check = gpu_check.Check(gpu_check.SMOKE_SCALE, tmp_path, budget_s=10.0)
    ran: list[str] = []
    item = check.item("long", 60.0, lambda item: ran.append("long"))
    assert ran == []
    assert item.status == "skip"
    assert "budget" in item.detail


def test_every_carried_wheel_is_pinned_in_the_cuda_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    block = re.search(r"^GPU_WHEELS := (.*?[^\\])$", makefile, re.M | re.S)
    assert block is not None
    names = block.group(1).replace("\\\n", " ").split()
    lock = (ROOT / "requirements" / "cuda.txt").read_text()
    for name in names:
        assert re.search(rf"^{re.escape(name)}==\S+ ", lock, re.M), name
    assert {"albumentations", "pydantic", "pydantic-core", "timm"} <= set(names)
