"""DVC stage ``predict``: one LoveDA cell's best checkpoint on LoveDA's Test images
-> submissions/loveda/<cell>.zip, the zip LoveDA's test server scores."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(
    dataset: str, model: str, fraction: float, seed: int, params_file: Path = Path("params.yaml")
) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.finetune import Cell
    from pipeline.flows.predict import predict_flow

    predict_flow(Cell(dataset, model, fraction, seed), load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
