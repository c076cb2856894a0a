"""DVC stage ``weights``: one model's starting encoder (``<backbone>-<init>``)
-> models/init/<model>.safetensors."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(model: str, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.finetune import weights_flow

    weights_flow(model, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
