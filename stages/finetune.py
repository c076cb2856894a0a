"""DVC stage ``finetune``: one grid cell (init, label fraction)
-> models/finetune/<dataset>/<backbone>/<init>-<fraction>/."""

from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.env import apply_env_defaults


def main(init: str, fraction: float, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows import finetune_flow

    finetune_flow(init, fraction, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
