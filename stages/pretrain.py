"""DVC stage ``pretrain``: the overlap task for one backbone and pretext variant
-> models/pretrain/<backbone>-<subimage>-<jitter>/."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(
    backbone: str, subimage_size: int, color_jitter: float, params_file: Path = Path("params.yaml")
) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.pretrain import pretrain_flow

    pretrain_flow(backbone, subimage_size, color_jitter, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
