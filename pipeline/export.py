"""`sop export`: an encoder for others (README, "Sharing an encoder"). Nothing is uploaded.

A pretrain run's kept encoder, or a fine-tuned cell's encoder part, is written twice under
``--out``:

- ``timm/``: ``model.safetensors`` in timm's own layout for the backbone's timm architecture
  (no classifier) and a README with the one ``timm.create_model(..., pretrained=True,
  pretrained_cfg_overlay=dict(file=...))`` call that loads it, with no code of ours;
- ``hf/``: the Hugging Face hub layout timm reads (``config.json``: architecture, model
  arguments, input size and normalisation; ``model.safetensors``) and a model card
  (``README.md``) with the provenance: the backbone, the params, the data and its licence, the
  pretext metrics, the code's commit.

Before anything is written the weights are loaded strictly into the timm model the files
describe: weights that are not such an encoder fail in one line naming the file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save
from torch import Tensor, nn

from pipeline import __version__, layout
from pipeline.config import Params
from pipeline.data.catalog import CATALOG
from pipeline.errors import DataError, ParamsError
from pipeline.files import atomic_write, write_text
from pipeline.models.backbones import BACKBONES
from pipeline.models.inits import NORMALISATIONS, Normalisation, normalisation_for
from pipeline.models.weights import read_state_dict
from pipeline.predict import cell_weights, read_run
from pipeline.tracking import git_state
from pipeline.zoo import INITS, Backbone, base_init, sop_run

TIMM_DIR = "timm"
HF_DIR = "hf"
WEIGHTS_FILE = "model.safetensors"  # the name timm's hub loader looks for first
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
ENCODER_PREFIX = "encoder."  # a segmenter's encoder part (pipeline.models.segmenters)
TAGS = ("timm", "image-feature-extraction", "remote-sensing", "self-supervised-learning")

Kind = Literal["pretrain", "cell"]


# --- what is exported ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A pretrain run's encoder or a fine-tuned cell, with the record beside its weights."""

    kind: Kind
    name: str  # the run (resnet50-112-0.0) or the cell (landcoverai-resnet50-sop-0.25-s0)
    weights: Path
    record: dict[str, Any]  # provenance.json or run.json
    root: Path | None  # the pipeline root it lies under; None: a file from elsewhere

    @property
    def backbone(self) -> str:
        return str(self.record["backbone"])


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; export reads {what} beside the weights") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a JSON object")
    return value


def _root_above(folder: Path, marker: tuple[str, str], depth: int) -> Path | None:
    """The pipeline root above ``folder`` when it lies where the layout puts it (``marker``
    the two folders below the root, ``depth`` the levels up); None for weights kept elsewhere."""
    folder = folder.resolve()
    if len(folder.parts) <= depth or folder.parts[-depth : -depth + 2] != marker:
        return None
    return folder.parents[depth - 1]


def pretrain_source(weights: Path) -> Source:
    """A pretrain run from its ``encoder.safetensors``, with its ``provenance.json``."""
    if not weights.is_file():
        raise DataError(f"{weights}: no encoder; run the pretrain stage first")
    record = _read_json(weights.parent / layout.PROVENANCE_FILE, "the run's provenance")
    if record.get("backbone") not in BACKBONES:
        raise DataError(
            f"{weights.parent / layout.PROVENANCE_FILE}: backbone {record.get('backbone')!r} "
            f"is not one of {list(BACKBONES)}; not a pretrain stage's provenance.json"
        )
    root = _root_above(weights.parent, ("models", "pretrain"), 3)
    return Source("pretrain", weights.parent.name, weights, record, root)


def cell_source(weights: Path) -> Source:
    """A fine-tuned cell from its ``best.safetensors``, with its ``run.json``."""
    record = read_run(weights)
    if record["backbone"] not in BACKBONES:
        raise DataError(
            f"{weights.parent / layout.RUN_FILE}: backbone {record['backbone']!r} is not one "
            f"of {list(BACKBONES)}"
        )
    root = _root_above(weights.parent, ("models", "finetune"), 4)
    return Source("cell", f"{record['dataset']}-{weights.parent.name}", weights, record, root)


def _source_from_path(given: Path) -> Source:
    """A run's or a cell's folder, or the weights file in it."""
    if given.is_dir():
        if (given / layout.ENCODER_FILE).is_file():
            return pretrain_source(given / layout.ENCODER_FILE)
        if (given / layout.BEST_WEIGHTS_FILE).is_file():
            return cell_source(given / layout.BEST_WEIGHTS_FILE)
        raise DataError(
            f"{given}: neither {layout.ENCODER_FILE} (a pretrain run) nor "
            f"{layout.BEST_WEIGHTS_FILE} (a fine-tuned cell)"
        )
    if given.name == layout.BEST_WEIGHTS_FILE or (given.parent / layout.RUN_FILE).is_file():
        return cell_source(given)
    return pretrain_source(given)


def resolve_source(given: str, root: Path, main_variant: str) -> Source:
    """What ``sop export`` was given: a folder or weights file (a run's or a cell's), a pretrain
    run's name (``resnet50-112-0.0``), a backbone (its main run, ``main_variant``) or a cell
    (``<dataset>-<model>-<fraction>-<seed>``, as ``sop predict`` names it) under ``root``."""
    path = Path(given)
    if path.exists():
        return _source_from_path(path)
    if path.suffix == ".safetensors" or len(path.parts) > 1:
        raise DataError(f"{path}: no such file or folder")
    run = sop_run(given, "sop", main_variant) if given in BACKBONES else given
    if run.partition("-")[0] in BACKBONES:
        weights = layout.pretrain_dir(root, run) / layout.ENCODER_FILE
        if not weights.is_file():
            raise DataError(f"{weights}: no such pretrain run; run its pretrain stage first")
        return pretrain_source(weights)
    return cell_source(cell_weights(given, root))


# --- the timm model the export describes -----------------------------------------------------


@dataclass(frozen=True)
class Encoder:
    """The encoder as timm builds it: architecture, arguments, weights, and its inputs."""

    backbone: str
    timm_name: str
    model_args: dict[str, Any]
    model: nn.Module
    input_size: int
    normalisation: Normalisation
    state: dict[str, Tensor] = field(repr=False)

    @property
    def mean(self) -> tuple[float, ...]:
        """timm's mean, on inputs scaled to 0..1 (ours is on raw 0..255 pixels)."""
        return tuple(round(m / 255.0, 6) for m in self.normalisation.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(round(s / 255.0, 6) for s in self.normalisation.std)


def encoder_state(source: Source) -> dict[str, Tensor]:
    """The encoder's weights: a run's file as it is, a cell's ``encoder.*`` part."""
    state = read_state_dict(source.weights)
    if source.kind == "pretrain":
        return state
    encoder = {
        k.removeprefix(ENCODER_PREFIX): v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
    }
    if not encoder:
        raise DataError(
            f"{source.weights}: no {ENCODER_PREFIX}* weights; not a fine-tuned segmenter"
        )
    return encoder


def vit_img_size(state: Mapping[str, Tensor], weights: Path, backbone: str) -> int:
    """The side a ViT's positional table was made for: a square grid of patches, plus at most
    a few prefix tokens (class, registers) the table may hold."""
    try:
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        tokens = int(state["pos_embed"].shape[1])
    except (KeyError, IndexError):
        raise DataError(
            f"{weights}: not a {backbone} encoder (no patch_embed.proj.weight or pos_embed)"
        ) from None
    return math.isqrt(tokens) * patch


def model_args(entry: Backbone, state: Mapping[str, Tensor], weights: Path) -> dict[str, Any]:
    """The keyword arguments of ``timm.create_model`` that rebuild the encoder: the zoo's, no
    classifier, and a ViT's input side (any other side works too: dynamic_img_size)."""
    args: dict[str, Any] = {**entry.timm_kwargs, "num_classes": 0}
    if entry.family == "vit":
        args.update(img_size=vit_img_size(state, weights, entry.name), dynamic_img_size=True)
    return args


def load_encoder(source: Source, params: Params) -> Encoder:
    """The timm model the export describes, with the source's weights loaded strictly."""
    entry = BACKBONES[source.backbone]
    state = encoder_state(source)
    args = model_args(entry, state, source.weights)
    import timm  # after pipeline.models, which makes torchvision (and so timm) importable

    model = timm.create_model(entry.timm_name, pretrained=False, **args)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise DataError(
            f"{source.weights}: not a {source.backbone} encoder ({entry.timm_name}): {reason}"
        ) from None
    exported = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    size = int(args.get("img_size", 0)) or input_size(source, params)
    return Encoder(
        source.backbone, entry.timm_name, args, model.eval(), size,
        source_normalisation(source, params), exported,
    )  # fmt: skip


def input_size(source: Source, params: Params) -> int:
    """The side the encoder was trained at: the pretext's source images, a cell's crops."""
    if source.kind == "pretrain":
        return int(source.record.get("params", {}).get("pretrain", {}).get("source_size", 224))
    return params.finetune.input_size_of(source.backbone)


def source_normalisation(source: Source, params: Params) -> Normalisation:
    """The pretext normalises as the SOP init does; a cell as its init was fine-tuned."""
    if source.kind == "pretrain":
        return NORMALISATIONS[INITS["sop"].normalisation]
    init = base_init(str(source.record["init"]))
    return normalisation_for(init, params.finetune.normalisation_of(init))


# --- provenance ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """What the model card says about where the encoder came from."""

    pretrain: dict[str, Any] | None  # the pretrain run's provenance.json, where known
    pretrain_name: str | None
    pretext_metrics: dict[str, Any]
    datasets: list[tuple[str, str, str | None]]  # (dataset, its role, its licence)
    commit: str
    commit_note: str


def dataset_licence(name: str) -> str | None:
    entry = CATALOG.get(name)
    return entry.licence if entry is not None else None


def pretext_metrics(root: Path | None, run: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The run's DVC metrics file where it lies under a root, else its provenance's final."""
    if root is not None and layout.pretrain_metrics_path(root, run).is_file():
        return _read_json(layout.pretrain_metrics_path(root, run), "metrics")
    final = record.get("final")
    return dict(final) if isinstance(final, Mapping) else {}


def code_commit(record: Mapping[str, Any]) -> tuple[str, str]:
    """(commit, where it comes from): the record's own, else this checkout's."""
    if record.get("code_commit"):
        return str(record["code_commit"]), "recorded by the run"
    commit, dirty = git_state(Path(__file__).resolve().parent)
    if commit is None:
        return "unknown", "no record of it, and this code is not in a git checkout"
    state = "with uncommitted changes" if dirty else "clean"
    return commit, (
        f"the checkout that exported it ({state}); the run's records hold no commit: its "
        "MLflow run's tag sop.code_commit names the one it ran at"
    )


def cell_pretrain(source: Source, main_variant: str) -> tuple[str | None, dict[str, Any] | None]:
    """A cell's SOP pretrain run (its name, and its provenance where the root holds it)."""
    init = str(source.record["init"])
    if base_init(init) != "sop":
        return None, None
    run = sop_run(source.backbone, init, main_variant)
    if source.root is None:
        return run, None
    path = layout.pretrain_dir(source.root, run) / layout.PROVENANCE_FILE
    return run, _read_json(path, "provenance") if path.is_file() else None


def provenance(source: Source, main_variant: str) -> Provenance:
    run: str | None = source.name
    record: dict[str, Any] | None = source.record
    if source.kind == "cell":
        run, record = cell_pretrain(source, main_variant)
    datasets: list[tuple[str, str, str | None]] = []
    if record is not None and "dataset" in record:
        dataset = str(record["dataset"])
        datasets.append((dataset, "pretraining (pretext task)", dataset_licence(dataset)))
    if source.kind == "cell":
        init = INITS[base_init(str(source.record["init"]))]
        if init.kind in ("timm", "url"):  # published weights: their data's terms are theirs
            datasets.append((init.name, f"starting weights: {init.description}", None))
        dataset = str(source.record["dataset"])
        datasets.append((dataset, "fine-tuning (labels)", dataset_licence(dataset)))
    metrics = pretext_metrics(source.root, run, record) if run and record else {}
    commit, note = code_commit(source.record)
    return Provenance(record, run, metrics, datasets, commit, note)


def hub_licence(datasets: list[tuple[str, str, str | None]]) -> str:
    """The card's ``license``: the data's, where every dataset has the same SPDX identifier;
    else ``other`` (the card names each)."""
    found = {licence for _, _, licence in datasets}
    if len(found) == 1:
        (licence,) = found
        if licence is not None and re.fullmatch(r"[A-Za-z0-9.+-]+", licence):
            return licence.lower()
    return "other"


# --- the files -------------------------------------------------------------------------------


def _literal(value: Any) -> str:
    """A Python literal as the README's call spells it (strings in double quotes)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def timm_overlay(encoder: Encoder, file: str) -> dict[str, Any]:
    """``pretrained_cfg_overlay``: the file, no classifier (so timm's load stays strict), and
    the inputs the encoder was trained on."""
    return {
        "file": file,
        "num_classes": 0,
        "input_size": (3, encoder.input_size, encoder.input_size),
        "mean": encoder.mean,
        "std": encoder.std,
    }


def timm_snippet(encoder: Encoder, file: str = WEIGHTS_FILE) -> str:
    """The one ``timm.create_model`` call that loads the exported weights, as Python source."""
    overlay = [f"        {k}={_literal(v)}," for k, v in timm_overlay(encoder, file).items()]
    args = [f"    {k}={_literal(v)}," for k, v in encoder.model_args.items()]
    head = ["import timm", "", "model = timm.create_model(", f"    {_literal(encoder.timm_name)},"]
    overlaid = ["    pretrained=True,", "    pretrained_cfg_overlay=dict(", *overlay, "    ),"]
    return "\n".join([*head, *overlaid, *args, ")", "model.eval()"])


def _inputs_note(encoder: Encoder) -> str:
    side = encoder.input_size
    entry = BACKBONES[encoder.backbone]
    other = (
        f"any multiple of {entry.segmentation_multiple} works too (`dynamic_img_size`)"
        if entry.family == "vit"
        else f"sides that are multiples of {entry.segmentation_multiple} keep every stride whole"
    )
    return (
        f"RGB scaled to 0..1, then normalised with mean `{_literal(encoder.mean)}` and std "
        f"`{_literal(encoder.std)}` (`timm.data.resolve_model_data_config(model)` returns them); "
        f"trained at {side}x{side}, and {other}."
    )


def _outputs_note(encoder: Encoder) -> str:
    if BACKBONES[encoder.backbone].family == "vit":
        return (
            "`model.forward_features(x)`: the class token and the patch tokens (no pooling, no "
            "head); `model.forward_intermediates(x)` gives the blocks' feature maps."
        )
    return (
        "`model.forward_features(x)`: the stride-32 feature map; "
        "`model.forward_intermediates(x, intermediates_only=True)` gives strides 2-32, as a "
        "U-Net decoder wants them."
    )


def timm_readme(source: Source, encoder: Encoder) -> str:
    return "\n".join(
        [
            f"# {source.name}: a {encoder.backbone} encoder for timm",
            "",
            f"`{WEIGHTS_FILE}` holds the encoder's weights in timm's own layout for "
            f"`{encoder.timm_name}`, with no classifier. timm alone loads it; run this from this "
            "folder (or give `file` the file's path):",
            "",
            "```python",
            timm_snippet(encoder),
            "```",
            "",
            "- `num_classes=0`, in the arguments and in the overlay: no classifier, and timm's "
            "load stays strict, so a missing or unexpected weight is an error rather than a "
            "silent partial load.",
            f"- The other arguments rebuild the architecture it was trained as "
            f"(`{encoder.backbone}`).",
            f"- Inputs: {_inputs_note(encoder)}",
            f"- Outputs: {_outputs_note(encoder)}",
            f"- Provenance, the data and its licence: `../{HF_DIR}/{CARD_FILE}`.",
            "",
        ]
    )


def hub_config(encoder: Encoder, licence: str) -> dict[str, Any]:
    """``config.json`` in timm's hub format: what ``timm.create_model("hf-hub:...")`` builds
    (architecture, ``model_args``) and the inputs the weights expect (``pretrained_cfg``)."""
    own: dict[str, Any] = getattr(encoder.model, "pretrained_cfg", {})  # its layer names
    side = encoder.input_size
    return {
        "architecture": encoder.timm_name,
        "num_classes": 0,
        "num_features": int(getattr(encoder.model, "num_features", 0)),
        "model_args": encoder.model_args,
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": [3, side, side],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(encoder.mean),
            "std": list(encoder.std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": own.get("first_conv"),
            "classifier": own.get("classifier"),
            "license": licence,
        },
    }


def _front_matter(licence: str) -> list[str]:
    lines = ["---", "library_name: timm", f"license: {licence}"]
    if licence == "other":
        lines += ["license_name: pretraining-data-terms"]  # the card's "Data and licences"
    return [*lines, "tags:", *[f"- {tag}" for tag in TAGS],
            "pipeline_tag: image-feature-extraction", "---"]  # fmt: skip


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows]]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else f"{value}"


def _summary(source: Source, encoder: Encoder, n_params: int) -> str:
    what = (
        f"the encoder kept by the pretrain run `{source.name}`"
        if source.kind == "pretrain"
        else f"the encoder of the fine-tuned segmentation cell `{source.name}` (init "
        f"`{source.record['init']}`, {source.record.get('fraction')} of the labels)"
    )
    head = (
        f"A `{encoder.backbone}` encoder (timm `{encoder.timm_name}`, {n_params / 1e6:.2f}M "
        f"parameters): {what}."
    )
    init = INITS[base_init(str(source.record.get("init", "sop")))]
    if init.kind != "sop":
        return f"{head} Its starting weights: {init.description}; no SOP pretraining."
    return (
        f"{head} Pretraining is subimage overlap prediction (a model learns to mark where a "
        "random subimage lies inside its source image; Sharma & Marin, WACV 2026 CV4EO "
        "workshop, arXiv 2601.01781), as the `sop` pipeline reproduces it."
    )


def _use_section(encoder: Encoder, repo: str, folder: Path) -> list[str]:
    return [
        "## Use it",
        "",
        "```python",
        "import timm",
        "",
        f'model = timm.create_model("hf-hub:{repo}", pretrained=True)',
        "# before uploading, from this folder:",
        'model = timm.create_model("local-dir:.", pretrained=True)',
        "```",
        "",
        f"Nothing was uploaded: `huggingface-cli upload {repo} {folder} .` does that. The same "
        f"weights load from a file with timm alone (`../{TIMM_DIR}/{CARD_FILE}`).",
        "",
        f"Inputs: {_inputs_note(encoder)} Outputs: {_outputs_note(encoder)}",
    ]


def _provenance_rows(source: Source, prov: Provenance, encoder: Encoder) -> list[tuple[str, str]]:
    import timm

    record = prov.pretrain or {}
    kwargs = ", ".join(f"{k}={_literal(v)}" for k, v in encoder.model_args.items())
    rows = [
        ("exported from", f"{source.kind} `{source.name}` (`{source.weights.name}`)"),
        ("backbone", f"`{encoder.backbone}`: timm `{encoder.timm_name}({kwargs})`"),
    ]
    if source.kind == "cell":
        rows.append(("pretrain run", f"`{prov.pretrain_name}`" if prov.pretrain_name else "none"))
    if prov.pretrain is None and source.kind == "cell" and prov.pretrain_name:
        rows.append(("pretrain record", "not found beside the cell: its facts are not here"))
    for key in ("pretext_variant", "kept", "starting_weights", "steps", "train_tiles",
                "val_tiles", "tile_index_sha256", "encoder_sha256"):  # fmt: skip
        if key in record:
            label = key.replace("_", " ")
            label = f"pretrain {label}" if source.kind == "cell" else label
            rows.append((label, f"`{record[key]}`"))
    rows += [
        ("code commit", f"`{prov.commit}`: {prov.commit_note}"),
        ("exported", f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `sop export` (sop "
                     f"{__version__}, timm {timm.__version__})"),
    ]  # fmt: skip
    return rows


def _metrics_section(source: Source, prov: Provenance) -> list[str]:
    lines = ["### Pretext metrics (validation, last epoch)", ""]
    if prov.pretext_metrics:
        rows = [(f"`{k}`", _number(v)) for k, v in prov.pretext_metrics.items()]
        lines += _table(rows, ("metric", "value"))
        lines += ["", "`val_iou`: IoU of the predicted overlap mask (probability > 0.5) with the "
                  "subimage's rectangle; `val_box_iou`: of the subimage-sized box placed where "
                  "the mean probability is highest; `baseline_iou`: what the centred box alone "
                  "scores on the same pairs (the position prior). An encoder learned the task "
                  "only where it beats the baseline."]  # fmt: skip
    else:
        lines += ["Not recorded here (no SOP pretraining, or its run is not under this root)."]
    if source.kind == "cell":
        metrics = source.record.get("metrics", {})
        rows = [(f"`{k}`", _number(v)) for k, v in metrics.items() if not isinstance(v, dict)]
        lines += ["", "### Fine-tuning metrics", "", *_table(rows, ("metric", "value"))]
    return lines


def _data_section(prov: Provenance, licence: str) -> list[str]:
    rows = [
        (f"`{name}`", f"{role}; licence: {text or 'not recorded (add it before sharing)'}")
        for name, role, text in prov.datasets
    ]
    return [
        "### Data and licences",
        "",
        *_table(rows, ("dataset", "use and licence")),
        "",
        f"The card's `license: {licence}` follows the data the weights were trained on. "
        "Whether trained weights are covered by their data's licence is not settled; this card "
        "does not decide it for you. A non-commercial (NC) or research-only licence on the data "
        "is a reason to share the weights on the same terms, and to check before any other use.",
    ]


def model_card(source: Source, encoder: Encoder, prov: Provenance, repo: str, hf: Path) -> str:
    licence = hub_licence(prov.datasets)
    n_params = sum(int(t.numel()) for t in encoder.model.parameters())
    params = (prov.pretrain or {}).get("params")
    lines = [
        *_front_matter(licence), "", f"# {source.name}", "",
        _summary(source, encoder, n_params), "", *_use_section(encoder, repo, hf), "",
        "## Provenance", "", *_table(_provenance_rows(source, prov, encoder), ("", "")), "",
        *_metrics_section(source, prov), "", *_data_section(prov, licence), "",
    ]  # fmt: skip
    if params is not None:
        text = json.dumps(params, indent=2, sort_keys=True)
        lines += ["### Pretraining params (resolved)", "", "```json", text, "```", ""]
    if source.kind == "cell":
        keys = ("dataset", "init", "fraction", "seed", "steps", "weights_sha256")
        rows = [(k, f"`{source.record[k]}`") for k in keys if k in source.record]
        lines += ["### Fine-tuning run", "", *_table(rows, ("", "")), ""]
    return "\n".join(lines)


# --- the export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    source: Source
    timm_dir: Path
    hf_dir: Path


def _check_out(out: Path, force: bool) -> tuple[Path, Path]:
    if out.exists() and not out.is_dir():
        raise ParamsError(f"--out {out}: a file, not a folder")
    folders = out / TIMM_DIR, out / HF_DIR
    for folder in folders:
        if not force and folder.is_dir() and any(folder.iterdir()):
            raise ParamsError(
                f"{folder}: not empty; give another --out, or --force to overwrite its files"
            )
    return folders


def export(
    source: Source, params: Params, out: Path, repo: str | None = None, force: bool = False
) -> Exported:
    """Write ``out/timm`` and ``out/hf`` for ``source``; each file atomically."""
    timm_dir, hf_dir = _check_out(out, force)
    encoder = load_encoder(source, params)
    prov = provenance(source, params.pretrain.main_variant)
    repo = repo or f"<you>/sop-{source.name}"
    blob = save(encoder.state, metadata={"format": "pt"})
    for folder in (timm_dir, hf_dir):
        with atomic_write(folder / WEIGHTS_FILE) as handle:
            handle.write(blob)
    write_text(timm_dir / CARD_FILE, timm_readme(source, encoder))
    config = hub_config(encoder, hub_licence(prov.datasets))
    write_text(hf_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    write_text(hf_dir / CARD_FILE, model_card(source, encoder, prov, repo, hf_dir))
    return Exported(source, timm_dir, hf_dir)
