"""One pipeline definition: dvc.yaml's code deps from the import graph, the demo's derived.

dvc.yaml is written by hand except for its code deps, its predict stage and its charts of
fine-tuning curves: each stage depends on its entry (``stages/<name>.py``) and on every package
module that entry runs (:func:`pipeline.imports.closure`), so a change to any of them, and to
nothing else, makes the stage stale; the predict stage (LoveDA's test-server submissions) is
there exactly when the profile's grid has LoveDA cells (``finetune.datasets`` holds loveda); the
charts of fine-tuning curves list the grid's cells (DVC's top-level plots take files, not
folders). demo/dvc.yaml is dvc.yaml seen from demo/ with a synth stage first, whose archive the
download stage reads.
Edited as text, so that dvc.yaml's comments stay. The Vega-Lite templates its plots name go to
``.dvc/plots/`` of both projects (:mod:`pipeline.views`). ``sop stages`` writes them all;
``--check`` only compares.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline import layout, views
from pipeline.config import Params, load_params
from pipeline.imports import closure

DEMO_DIR = "demo"
DEMO_ARCHIVE = "archive/landcover.ai.v1.zip"
DEMO_HEADER = "# The demo pipeline: generated from ../dvc.yaml by `sop stages`; do not edit.\n"
# The stage only the demo has; its code deps are filled in like every other stage's.
SYNTH_STAGE = f"""  synth:
    cmd: python stages/synth.py {DEMO_ARCHIVE}
    deps:
      - stages/synth.py
    params:
      - synthetic
      - data.tiling.landcoverai
    outs:
      - {DEMO_ARCHIVE}:
          cache: false
      - {DEMO_ARCHIVE}.md5:
          cache: false

"""
# LoveDA's test-server submissions: one stage per LoveDA cell of the grid, named as the cell's
# finetune stage is (predict@loveda-<model>-<fraction>-<seed>); only in a profile with one.
SUBMITTED_DATASET = "loveda"
ITEM = "${item.dataset} ${item.model} ${item.fraction} ${item.seed}"
CELL_NAME = "${item.model}-${item.fraction}-s${item.seed}"
PREDICT_STAGE = """  predict:
    # LoveDA's test server (hidden Test labels): each LoveDA cell's predictions on the Test
    # images, zipped as the server takes them. Written by `sop stages` only while
    # finetune.datasets holds loveda; it reads the params evaluate reads.
    matrix:
      dataset: [loveda]
      model: ${finetune.models}
      fraction: ${data.label_fractions}
      seed: ${finetune.seeds}
    cmd: python stages/predict.py <item>
    deps:
      - data/raw/${item.dataset}
      - models/finetune/${item.dataset}/<cell>/best.safetensors
      - models/finetune/${item.dataset}/<cell>/run.json
      - stages/predict.py
    params:
      - finetune.normalisation
      - finetune.input_size
      - finetune.backbone_input_size
      - finetune.window_overlap
      - compute.device
    outs:
      - submissions/${item.dataset}/<cell>.zip

""".replace("<item>", ITEM).replace("<cell>", CELL_NAME)
PREDICT_BLOCK = re.compile(r"(?m)^  predict:\n(?:(?:    .*|)\n)*")
# The fine-tuning curves, a chart per dataset and backbone; the last block of the file.
CURVES_HEADER = (
    "  # The fine-tuning curves: a chart per dataset and backbone, a line per cell (colour =\n"
    "  # init, dash = label fraction). Written by `sop stages` from the grid's cells.\n"
)
CURVES_BLOCK = re.compile(r"(?ms)^  # The fine-tuning curves: .*\Z")
STAGE_CMD = re.compile(r"^\s*cmd: python (?:\.\./)?stages/(\w+)\.py\b")
CODE_DEP = re.compile(r"^(\s*)- (?:\.\./)?(?:stages|pipeline)/\S+\.py\s*$")


@dataclass(frozen=True)
class Difference:
    path: Path
    expected: str


def code_deps(root: Path, stage: str) -> list[str]:
    """``stages/<stage>.py`` and every package file it runs, relative to ``root``."""
    script = root / "stages" / f"{stage}.py"
    return [path.relative_to(root).as_posix() for path in closure(script, root)]


def with_code_deps(text: str, root: Path) -> str:
    """``text`` (a dvc.yaml) with each stage's run of code deps replaced by its closure."""
    out: list[str] = []
    stage: str | None = None
    for line in text.splitlines(keepends=True):
        command = STAGE_CMD.match(line)
        if command:
            stage = command.group(1)
        dep = CODE_DEP.match(line)
        if dep is None:
            out.append(line)
            continue
        if stage is None:
            raise ValueError(f"a code dep before any stage's cmd: {line.strip()}")
        if out and CODE_DEP.match(out[-1]):
            continue  # the rest of a run already replaced
        out.extend(f"{dep.group(1)}- {path}\n" for path in code_deps(root, stage))
    return "".join(out)


def profile_params(params_file: Path) -> Params:
    """A profile's params; a profile without a file gets the defaults (the paper's)."""
    if not params_file.is_file():
        return Params()
    return load_params(params_file)


def with_predict_stage(text: str, params: Params) -> str:
    """``text`` (a dvc.yaml) with the predict stage just before the report's if ``params``'
    grid has LoveDA cells, and without it otherwise."""
    text = PREDICT_BLOCK.sub("", text)
    if SUBMITTED_DATASET not in params.finetune.datasets:
        return text
    if "\n  report:\n" not in text:
        raise ValueError("dvc.yaml: no report stage to put the predict stage before")
    return text.replace("\n  report:\n", "\n" + PREDICT_STAGE + "  report:\n", 1)


def curve_plots(params: Params) -> str:
    """The top-level plots of :data:`CURVES_HEADER` for ``params``' grid."""
    grid = params.finetune
    charts: dict[tuple[str, str], list[str]] = {}
    for dataset, model in itertools.product(grid.datasets, grid.models):
        files = charts.setdefault((dataset, model.partition("-")[0]), [])
        for fraction, seed in itertools.product(params.data.label_fractions, grid.seeds):
            name = f"{model}-{float(fraction)}-s{seed}"
            files.append(f"        plots/finetune/{dataset}/{name}.csv: val_miou\n")
    blocks = [
        f"  - val_miou, {dataset} {backbone}:\n      template: sop_curves_by_init\n"
        f"      title: val_miou, {dataset} {backbone} (colour = init, dash = label fraction)\n"
        "      x: epoch\n      y_label: val_miou\n      y:\n" + "".join(files)
        for (dataset, backbone), files in charts.items()
    ]
    return CURVES_HEADER + "".join(blocks)


def with_curve_plots(text: str, params: Params) -> str:
    """``text`` (a dvc.yaml) ending with :func:`curve_plots` of ``params``."""
    body = CURVES_BLOCK.sub("", text).rstrip("\n") + "\n"
    return body + curve_plots(params)


def demo_definition(text: str, root: Path) -> str:
    """demo/dvc.yaml from dvc.yaml's ``text``: seen from demo/, with the synth stage first."""
    body = text[text.index("stages:\n") :]
    demo_params = profile_params(root / DEMO_DIR / layout.PARAMS_FILE)
    body = with_curve_plots(with_predict_stage(body, demo_params), demo_params)
    body = body.replace("stages:\n", "stages:\n" + SYNTH_STAGE, 1)
    body = with_code_deps(body, root)
    body = re.sub(r"(?m)^(\s*(?:- |cmd: python ))(stages|pipeline)/", r"\1../\2/", body)
    download = re.search(r"(?m)^  download:\n(?:.*\n)*?(\s*)deps:\n", body)
    if download is None:
        raise ValueError("dvc.yaml: no download stage with deps")
    indent = download.group(1) + "  "
    archive_deps = f"{indent}- {DEMO_ARCHIVE}\n{indent}- {DEMO_ARCHIVE}.md5\n"
    return DEMO_HEADER + body[: download.end()] + archive_deps + body[download.end() :]


def expected_files(root: Path) -> dict[Path, str]:
    """What dvc.yaml and demo/dvc.yaml should hold."""
    paper = (root / layout.DVC_FILE).read_text()
    params = profile_params(root / layout.PARAMS_FILE)
    paper = with_curve_plots(with_predict_stage(paper, params), params)
    paper = with_code_deps(paper, root)
    return {
        root / layout.DVC_FILE: paper,
        root / DEMO_DIR / layout.DVC_FILE: demo_definition(paper, root),
        **views.template_files(root),
        **views.template_files(root / DEMO_DIR),
    }


def differences(root: Path) -> list[Difference]:
    """The definition files whose text is not what they should hold."""
    return [
        Difference(path, expected)
        for path, expected in expected_files(root).items()
        if not path.is_file() or path.read_text() != expected
    ]


def write(root: Path) -> list[Path]:
    """Write the files that differ; return them."""
    changed = differences(root)
    for difference in changed:
        difference.path.parent.mkdir(parents=True, exist_ok=True)
        difference.path.write_text(difference.expected)
    return [difference.path for difference in changed]
