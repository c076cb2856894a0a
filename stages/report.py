"""DVC stage ``report``: every evaluated cell -> results/results.csv, report.md and plots."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.report import report_flow

    report_flow(load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
