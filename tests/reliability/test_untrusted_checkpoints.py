"""Untrusted checkpoints: every file the project loads weights or training state from is read as
data (safetensors, or ``torch.load(weights_only=True)``), so a pickle carrying a payload is
refused and its payload never runs.

Each load path gets a real malicious file at the place the pipeline reads it: a ``torch.save``
checkpoint and a raw pickle whose unpickling would create a marker file. The control test
shows the payloads are live (an ordinary unpickling runs them), so the refusals are real. A
source scan keeps new code from adding an unsafe load.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline import layout
from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.flows.finetune import Cell, evaluate_flow
from pipeline.models.backbones import create_backbone
from pipeline.models.inits import init_state
from pipeline.models.weights import WeightsError, load_starting_weights, read_state_dict
from pipeline.train import engine
from tests.reliability.conftest import REPO, assert_intact, snapshot
from tests.servers import FileServer
from tests.test_inits import serve_as


class TouchPayload:
    """Unpickled, this calls ``Path.touch(marker)``: the marker's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


class ShellPayload(TouchPayload):
    """The classic form: ``os.system`` with a command."""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (os.system, (f"touch '{self.marker}'",))


def write_malicious(path: Path, form: str, marker: Path) -> Path:
    """A checkpoint-shaped file at ``path`` whose unpickling creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "torch.save":
        # Real tensors beside the payload: it looks like any checkpoint.
        torch.save(
            {"model": {"conv.weight": torch.ones(2, 2)}, "step": 20, "extra": TouchPayload(marker)},
            path,
        )
    else:
        path.write_bytes(pickle.dumps({"state_dict": {"w": [0.0]}, "extra": ShellPayload(marker)}))
    return path


FORMS = ("torch.save", "raw pickle")
# torch notes that a raw pickle's protocol is not its own before refusing it: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


@pytest.mark.parametrize("form", FORMS)
def test_the_crafted_files_do_run_their_payload_when_unpickled(form: str, tmp_path: Path) -> None:
    """The control: what the load paths below refuse would have run code."""
    marker = tmp_path / "payload-ran"
    path = write_malicious(tmp_path / "evil.pt", form, marker)
    if form == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


# --- every load path ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPath:
    """Where the pipeline reads a weights or state file, and how it reads it there."""

    name: str
    file: Path  # the malicious file, relative to the project root
    load: Callable[[Path, Path], object]  # (project root, the file) -> loads it as the stage does


def pretrain_weights_file(root: Path, path: Path) -> object:
    """``pretrain.weights_file.<backbone>``: the pretext's starting weights."""
    return load_starting_weights(create_backbone("resnet_demo", 64), "resnet_demo", "none", path)


def finetune_weights_file(root: Path, path: Path) -> object:
    """``finetune.weights_file.<init>``: a local copy of a published init (the weights stage)."""
    return init_state(
        "imagenet", "resnet50", weights_file=path, sop_encoder=None, cache_dir=root, progress=False
    )


def sop_encoder(root: Path, path: Path) -> object:
    """The pretrain stage's ``encoder.safetensors``, read by the weights stage for the SOP init."""
    return init_state(
        "sop", "resnet_demo", weights_file=None, sop_encoder=path, cache_dir=root, progress=False
    )


def finetune_init_weights(root: Path, path: Path) -> object:
    """The weights stage's ``models/init/<model>.safetensors``, read by the finetune stage."""
    return read_state_dict(path)


def resume_checkpoint(root: Path, path: Path) -> object:
    """The newest ``step-*.pt`` a pretraining or fine-tuning run resumes from."""
    return engine.latest_checkpoint(path.parent)


def best_checkpoint(root: Path, path: Path) -> object:
    """``best.pt``, the best epoch's weights a fine-tuning run exports at its end."""
    return engine.load_best(path.parent)


def evaluated_weights(root: Path, path: Path) -> object:
    """``best.safetensors``, read by the evaluate stage (its flow's body, without Prefect)."""
    return evaluate_flow.fn(EVALUATED_CELL, load_params(REPO / "demo" / "params.yaml"), root)


EVALUATED_CELL = Cell("landcoverai", "resnet_demo-random", 1.0, 0)
HERE = Path()  # the layout's paths relative to the project root

LOAD_PATHS = [
    LoadPath("pretrain weights_file", Path("weights/resnet_demo.pth"), pretrain_weights_file),
    LoadPath("finetune weights_file", Path("weights/resnet50.pth"), finetune_weights_file),
    LoadPath(
        "sop encoder", layout.pretrain_dir(HERE, "resnet_demo") / layout.ENCODER_FILE, sop_encoder
    ),
    LoadPath("finetune init", layout.init_path(HERE, "resnet_demo-sop"), finetune_init_weights),
    LoadPath("resume checkpoint", Path("checkpoints/step-00000020.pt"), resume_checkpoint),
    LoadPath("best checkpoint", Path("checkpoints/best.pt"), best_checkpoint),
    LoadPath(
        "evaluated weights",
        layout.cell_dir(HERE, EVALUATED_CELL) / layout.BEST_WEIGHTS_FILE,
        evaluated_weights,
    ),
]


@pytest.fixture
def project(tmp_path: Path, small_store: Path) -> Path:
    """A project with the outputs the load paths sit among: an earlier, good checkpoint, the
    evaluated cell's run record and the tile store it is evaluated on."""
    root = tmp_path / "project"
    good = root / "checkpoints" / "step-00000010.pt"
    good.parent.mkdir(parents=True)
    torch.save({"model": {"conv.weight": torch.zeros(2, 2)}, "step": 10}, good)
    cell = layout.cell_dir(root, EVALUATED_CELL)
    cell.mkdir(parents=True)
    (cell / layout.RUN_FILE).write_text("{}")
    tiles = layout.tiles_dir(root, EVALUATED_CELL.dataset)
    tiles.parent.mkdir(parents=True)
    tiles.symlink_to(small_store)
    return root


@pytest.mark.bad_input
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("where", LOAD_PATHS, ids=lambda p: p.name)
def test_a_malicious_pickle_is_refused_and_its_payload_never_runs(
    where: LoadPath, form: str, project: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    path = write_malicious(project / where.file, form, marker)
    before = snapshot(project)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome: object = where.load(project, path)
        except Exception as exc:  # which error it is, is asserted below
            outcome = exc
    assert not marker.exists(), "the payload ran"
    assert_intact(before, project)  # the malicious file and every earlier one are still there

    if where.load is resume_checkpoint:
        # Skipped with a warning naming it; the run resumes from the previous checkpoint.
        assert isinstance(outcome, dict)
        assert outcome["step"] == 10
        assert any(str(path) in str(w.message) for w in caught), [str(w.message) for w in caught]
        return
    assert isinstance(outcome, Exception), f"{where.name}: loaded {type(outcome).__name__}"
    message = str(outcome)
    assert isinstance(outcome, PipelineError), repr(outcome)  # the CLI's one-line error
    assert str(path) in message
    assert "\n" not in message  # one line, as the CLI prints it


@pytest.mark.bad_input
def test_a_run_whose_only_checkpoint_is_malicious_starts_fresh(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = write_malicious(tmp_path / "checkpoints" / "step-00000050.pt", "torch.save", marker)
    with pytest.warns(UserWarning, match="unreadable checkpoint skipped") as caught:
        assert engine.latest_checkpoint(path.parent) is None
    assert not marker.exists()
    assert str(path) in str(caught[0].message)
    assert path.exists()  # kept for inspection, not deleted


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["step-00000020.pt", "best.pt"])
def test_a_matching_digest_does_not_make_a_malicious_checkpoint_trusted(
    name: str, tmp_path: Path
) -> None:
    # Whoever can write a checkpoint can write its digest too: the digest catches torn or
    # corrupt bytes, and only reading the file as data stops a payload.
    marker = tmp_path / "payload-ran"
    path = write_malicious(tmp_path / "checkpoints" / name, "torch.save", marker)
    digest = path.with_name(path.name + engine.DIGEST_SUFFIX)
    digest.write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped step checkpoint's warning
        if name == "best.pt":
            with pytest.raises(PipelineError, match=re.escape(str(path))):
                engine.load_best(path.parent)
        else:
            assert engine.latest_checkpoint(path.parent) is None
    assert not marker.exists()
    assert path.exists()
    assert digest.exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("form", FORMS)
def test_a_published_init_with_a_payload_is_refused_even_when_its_hash_matches(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pinned prefix is 8 hex digits (32 bits): an attacker can match it, so the hash check
    # alone cannot be what stops a payload; reading the file as data must.
    marker = tmp_path / "payload-ran"
    payload = write_malicious(tmp_path / "evil.pth", form, marker)
    server = FileServer(tmp_path / "served")
    (tmp_path / "served").mkdir()
    try:
        spec = serve_as(monkeypatch, server, "gassl", payload)
        with pytest.raises(WeightsError, match="refused, not plain tensors") as info:
            init_state(
                "gassl",
                "resnet50",
                weights_file=None,
                sop_encoder=None,
                cache_dir=tmp_path / "cache",
                progress=False,
            )
    finally:
        server.close()
    assert not marker.exists()
    assert spec.file_name is not None
    assert str(tmp_path / "cache" / spec.file_name) in str(info.value)


# --- the source guard --------------------------------------------------------------------------

UNSAFE_MODULES = (
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every call or import in ``source`` that could unpickle untrusted bytes."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module in UNSAFE_MODULES or any(n.split(".")[0] in UNSAFE_MODULES for n in names):
                found.append(f"{where}: imports {module or ', '.join(names)}")
            if module == "torch" and "load" in names:
                found.append(f"{where}: from torch import load (use torch.load(weights_only=True))")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("torch.load", "torch.serialization.load") and not _keyword_is_true(
            node, "weights_only"
        ):
            found.append(f"{where}: {name} without weights_only=True")
        elif name.endswith(("np.load", "numpy.load")) and any(
            k.arg == "allow_pickle"
            and not (isinstance(k.value, ast.Constant) and k.value.value is False)
            for k in node.keywords
        ):
            found.append(f"{where}: {name} with allow_pickle")
        elif name in ("torch.jit.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{where}: {name}")
    return found


def test_the_scan_flags_each_unsafe_form() -> None:
    """The guard below can fail: each unsafe form is caught, the safe forms are not."""
    unsafe = """
import pickle
import re
from torch import load
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
yaml.load(text)
"""
    assert len(unsafe_loads(unsafe)) == 6
    safe = """
torch.load(path, map_location="cpu", weights_only=True)
np.load(path, mmap_mode="r")
yaml.safe_load(text)
"""
    assert unsafe_loads(safe) == []


def test_no_unsafe_load_in_the_pipeline_source() -> None:
    found = [
        hit
        for folder in ("pipeline", "stages")
        for path in sorted((REPO / folder).rglob("*.py"))
        for hit in unsafe_loads(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert found == []
