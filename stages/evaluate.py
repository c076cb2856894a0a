"""DVC stage ``evaluate``: one cell's best checkpoint on the test split
-> metrics/evaluate/<dataset>/<cell>.json, reports/confusion/<dataset>/<cell>.{json,png}."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(
    dataset: str, model: str, fraction: float, seed: int, params_file: Path = Path("params.yaml")
) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.finetune import Cell, evaluate_flow

    evaluate_flow(Cell(dataset, model, fraction, seed), load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
