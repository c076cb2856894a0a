"""Models: backbones by registry name, and the overlap (pretext) models built on them."""

from pipeline.compat import ensure_torchvision

# timm imports torchvision; beside a CPU torch its CUDA wheel needs the workaround first.
ensure_torchvision()
