"""DVC stage ``report``: every evaluated cell -> results/results.csv, report.md and plots."""

from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.env import apply_env_defaults


def main(params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows import report_flow

    report_flow(load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
