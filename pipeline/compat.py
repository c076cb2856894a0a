"""The one workaround for torchvision's CUDA wheels beside a CPU-only torch.

PyPI only ships CUDA builds of torchvision. Next to the CPU torch their compiled ops fail to
register and ``import torchvision`` (hence ``import timm``) raises
``operator torchvision::nms does not exist`` (pytorch/vision#9085). Declaring the schemas of the
ops its Python side touches at import time lets the pure-Python parts (models, transforms,
FrozenBatchNorm2d) load; the compiled kernels stay unavailable, and this project does not use them.
Where torchvision loads normally, nothing here acts.
"""

from __future__ import annotations

import sys

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: object | None = None  # the torch.library handle must outlive this call
workaround_applied = False


def ensure_torchvision() -> None:
    """Import torchvision, declaring its missing op schemas only when its compiled ops fail."""
    global _library, workaround_applied
    try:
        import torchvision

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch

    # The failed import left half-initialised modules behind; drop them before importing again.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
    for schema in _MISSING_OPS.values():
        library.define(schema)  # type: ignore[no-untyped-call]
    _library = library
    workaround_applied = True
    import torchvision  # noqa: F401
