"""DVC stage ``download``: fetch, verify and extract one dataset into data/raw/<dataset>."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(dataset: str, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.data import download_flow

    download_flow(dataset, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
