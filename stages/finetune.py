"""DVC stage ``finetune``: one grid cell (dataset, model, label fraction, seed)
-> models/finetune/<dataset>/<model>-<fraction>-s<seed>/."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(
    dataset: str, model: str, fraction: float, seed: int, params_file: Path = Path("params.yaml")
) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.finetune import Cell, finetune_flow

    finetune_flow(Cell(dataset, model, fraction, seed), load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
