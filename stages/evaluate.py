"""DVC stage ``evaluate``: one cell's best checkpoint on the test split
-> metrics/evaluate/..., reports/confusion/..."""

from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.env import apply_env_defaults


def main(init: str, fraction: float, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows import evaluate_flow

    evaluate_flow(init, fraction, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
