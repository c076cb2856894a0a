from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
try:
    import torchvision
    plain = True
except RuntimeError:  # a torchvision whose compiled ops do not fit this torch
    plain = False
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]  # its half-initialised modules, as compat drops them
from pipeline import compat
compat.ensure_torchvision()
import timm, torch
model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
out = model(torch.zeros(1, 3, 64, 64))
print(json.dumps({"plain": plain, "applied": compat.workaround_applied, "shape": list(out.shape)}))
"""


def test_torchvision_workaround_acts_only_when_its_ops_fail() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 3]  # timm works either way
    assert report["applied"] == (not report["plain"])
