"""Demo stage ``synth``: write the synthetic LandCover.ai-style archive the demo downloads."""

from pathlib import Path

from pipeline.config import load_params
from pipeline.env import apply_env_defaults
from pipeline.stage import stage_main


def main(out: Path, params_file: Path = Path("params.yaml")) -> None:
    root = params_file.resolve().parent
    apply_env_defaults(root)
    from pipeline.flows.synth import synth_flow

    synth_flow(out, load_params(params_file), root)


if __name__ == "__main__":
    stage_main(main)
