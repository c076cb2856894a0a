"""DVC stage ``pretrain``: the overlap task for one backbone and pretext variant
-> models/pretrain/<backbone>-<subimage>-<jitter>/; the sweeps' stages ``pretrain_images``
(``--image-fraction F`` -> <backbone>-img<F>/) and ``pretrain_transfer`` (``--dataset D`` ->
<backbone>-<D>/) run it for the main variant."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(
    backbone: str,
    subimage_size: int,
    color_jitter: float,
    image_fraction: float | None = None,
    dataset: str | None = None,
    params_file: Path = Path("params.yaml"),
) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.pretrain import pretrain_flow

    params = load_params(params_file)
    pretrain_flow(backbone, subimage_size, color_jitter, params, root, image_fraction, dataset)


if __name__ == "__main__":
    stage_main(main)
