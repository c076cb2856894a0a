"""DVC stage ``pretrain``: the overlap task for one backbone -> models/pretrain/<backbone>."""

from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.env import apply_env_defaults


def main(backbone: str, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows import pretrain_flow

    pretrain_flow(backbone, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
