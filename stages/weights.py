"""DVC stage ``weights``: one model's starting encoder (``<backbone>-<init>``)
-> models/init/<model>.safetensors."""

from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.env import apply_env_defaults


def main(model: str, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows import weights_flow

    weights_flow(model, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
