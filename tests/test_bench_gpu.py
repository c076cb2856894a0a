"""benchmarks/gpu.py: the CLI without a GPU (gpu_check.py's too), and its CPU smoke run end to end.

No timing thresholds: the figures depend on the machine. The FLOP counts are checked against an
independent count of each model's forward pass (training is about 3x the forward).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODES = ("optimised", "eager")


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    import gpu as module

    return module


@pytest.mark.parametrize("script", ["gpu", "gpu_check"])
def test_without_cuda_it_says_the_figures_are_pending_and_exits_2(
    script: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "results.md"
    assert module.main(["--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "pending" in lines[0]
    assert "no CUDA device" in lines[0]
    assert captured.out == ""
    assert not out.exists()  # nothing measured, nothing written


def forward_flops_per_image(case: Any) -> float:
    """FlopCounterMode's count of one forward pass, built here from the pipeline's models."""
    from torch.utils.flop_counter import FlopCounterMode

    import pipeline.models  # noqa: F401  (torchvision beside a CPU torch, before timm)

    batch = 2
    if case.kind == "pretrain":
        from pipeline.models.overlap import create_overlap_model

        model = create_overlap_model(case.backbone, case.size, case.subimage)
        inputs: tuple[torch.Tensor, ...] = (
            torch.rand(batch, 3, case.size, case.size),
            torch.rand(batch, 3, case.subimage, case.subimage),
        )
    elif case.kind == "finetune":
        from pipeline.models.segmenters import create_segmenter

        model = create_segmenter(case.backbone, 5, case.size)
        inputs = (torch.rand(batch, 3, case.size, case.size),)
    else:
        import timm

        model = timm.create_model(case.backbone, pretrained=False, num_classes=1000)
        inputs = (torch.rand(batch, 3, case.size, case.size),)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return float(counter.get_total_flops()) / batch


@pytest.mark.slow
def test_smoke_run_measures_every_case_in_both_modes(gpu: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    out.write_text("# Benchmark results\n\nThe CPU section stays.\n")
    raw = tmp_path / "gpu.json"
    argv = ["--smoke", "--out", str(out), "--json", str(raw), "--work", str(tmp_path / "work")]
    assert gpu.main(argv) == 0

    results = json.loads(raw.read_text())
    info, rows = results["info"], results["rows"]
    assert info["smoke"] is True
    assert info["matmul_tflops"] > 0
    assert info["store_tiles"] > 0
    assert sorted((row["case"], row["mode"]) for row in rows) == sorted(
        (case, mode) for case in gpu.CASE_NAMES for mode in MODES
    )
    for row in rows:
        where = (row["case"], row["mode"])
        assert row["error"] is None, where
        assert row["batch"] == 2, where
        assert row["model_images_s"] > 0, where
        assert row["images_s"] > 0, where
        assert row["mfu_percent"] > 0, where
        if row["case"].startswith("pretrain-"):  # end to end through the store's DataLoader
            assert row["e2e_images_s"] > 0, where
            assert row["images_s"] == row["e2e_images_s"], where
        else:
            assert row["e2e_images_s"] is None, where
        if row["mode"] == "optimised":
            assert row["speedup"] > 0, where
            assert row["settings"].startswith("bf16 autocast, channels_last"), where
        else:
            assert row["speedup"] is None, where
            assert row["settings"].startswith("fp32 (no autocast), contiguous"), where
        assert row["largest_batch"] is None, where  # no search in a smoke run

    cases = gpu.smoke_cases()
    for name in gpu.CASE_NAMES:
        forward = forward_flops_per_image(cases[name])
        assert forward > 0, name
        for row in (r for r in rows if r["case"] == name):
            # forward + backward: about 3x the forward (the first layer's input gradient and
            # frozen stages are skipped; interpolation and the loss are not counted)
            assert 2 * forward <= row["flops_per_image"] <= 4 * forward, (name, row["mode"])

    text = out.read_text()
    assert text.startswith("# Benchmark results")
    assert "The CPU section stays." in text
    assert text.count("<!-- begin gpu -->") == 1
    section = text.split("<!-- begin gpu -->", 1)[1].split("<!-- end gpu -->", 1)[0]
    assert section.strip().startswith("## GPU: training throughput (`benchmarks/gpu.py`)")
    assert "Smoke run" in section
    assert "bf16 matmul rate" in section
    for name in gpu.CASE_NAMES:
        assert name in section, name
    assert section.count("target met: ") == 2
