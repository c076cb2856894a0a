"""DVC's views of the results: the Vega-Lite templates of dvc.yaml's plots, the HTML page
``sop plots`` renders them into, and ``sop metrics``' narrow table.

DVC's own page loads Vega, Vega-Lite and vega-embed from a CDN, so it is blank without internet
(as on many GPU clusters). The page here inlines them, from vl-convert-python's bundle (a pinned
package of the lock), and leaves out DVC's ``{scripts}`` placeholder, where DVC puts its CDN
tags. The templates (``sop stages`` writes them to ``.dvc/plots/``, where DVC looks a plot's
``template`` up) put every IoU on one 0..1 axis and every label fraction on one 0..1 axis with a
margin, so charts compare at a glance and a point at fraction 1.0 is whole; the results chart
colours cells by init, and so does a dataset and backbone's chart of fine-tuning curves. Charts
draw as SVG, so their titles and axes are text a browser test reads.

``dvc metrics show`` puts every key of every file in one row (900 characters for the demo's
evaluate cells, per-class IoUs included); :func:`metrics_table` shows a stage's few headline
figures, a row per file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

OUT_DIR = "dvc_plots"
TEMPLATE_DIR = Path(".dvc") / "plots"
# DVC writes Vega-Lite 5 specs; vega-embed warns when the library's major version differs.
VEGA_LITE = "v5.21"
# DVC's plot divs call the global vegaEmbed(id, spec).
GLOBALS = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
SHARE = {"domain": [0, 1]}  # every IoU and mIoU
FRACTION = {"domain": [0, 1.05]}  # label fractions up to 1.0, the last point inside the frame

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>SOP: DVC plots</title>
    <script type="text/javascript">
<bundle>
    </script>
    <style>
        body { font-family: sans-serif; }
        body > div { display: inline-block; margin: 8px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _base(mark: dict[str, Any], x_scale: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": SCHEMA,
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": "<DVC_METRIC_TITLE>",
        "width": 360,
        "height": 260,
        "usermeta": {"embedOptions": {"renderer": "svg", "actions": False}},
        "mark": mark,
        "encoding": {
            "x": {
                "field": "<DVC_METRIC_X>",
                "type": "quantitative",
                "title": "<DVC_METRIC_X_LABEL>",
                "scale": x_scale,
            },
            "y": {
                "field": "<DVC_METRIC_Y>",
                "type": "quantitative",
                "title": "<DVC_METRIC_Y_LABEL>",
                "scale": SHARE,
            },
            "tooltip": [{"field": "<DVC_METRIC_X>"}, {"field": "<DVC_METRIC_Y>"}],
        },
    }


def templates() -> dict[str, dict[str, Any]]:
    """The Vega-Lite templates dvc.yaml's plots name, by name."""
    curve = _base({"type": "line", "point": True}, {"zero": True, "nice": True})
    by_init = _base({"type": "point", "filled": True, "size": 70}, FRACTION)
    by_init["encoding"]["color"] = {"field": "init", "type": "nominal", "title": "init"}
    by_init["encoding"]["shape"] = {"field": "backbone", "type": "nominal", "title": "backbone"}
    by_init["encoding"]["tooltip"] += [{"field": "init"}, {"field": "backbone"}, {"field": "seed"}]
    return {"sop_curve": curve, "sop_by_init": by_init, "sop_curves_by_init": curves_by_init()}


def curves_by_init() -> dict[str, Any]:
    """Many cells' curves in one chart: DVC names each row's file (``<backbone>-<init>-
    <fraction>-s<seed>.csv``, the cell's name), from which init and fraction are read."""
    chart = _base({"type": "line", "point": False}, {"zero": True, "nice": True})
    parts = "split(replace(datum.filename, '.csv', ''), '-')"
    chart["transform"] = [
        {"calculate": f"join(slice({parts}, 1, -2), '-')", "as": "init"},
        {"calculate": f"{parts}[length({parts}) - 2]", "as": "label fraction"},
    ]
    encoding = chart["encoding"]
    encoding["color"] = {"field": "init", "type": "nominal", "title": "init"}
    encoding["strokeDash"] = {"field": "label fraction", "type": "nominal"}
    encoding["detail"] = {"field": "filename", "type": "nominal"}  # a line per cell
    encoding["tooltip"] = [{"field": "filename", "title": "cell"}, *encoding["tooltip"]]
    return chart


def template_files(root: Path) -> dict[Path, str]:
    """What ``root``'s ``.dvc/plots/<name>.json`` files should hold."""
    return {
        root / TEMPLATE_DIR / f"{name}.json": json.dumps(content, indent=2) + "\n"
        for name, content in templates().items()
    }


def offline_page() -> str:
    """DVC's HTML template with Vega, Vega-Lite and vega-embed inlined: it loads nothing."""
    try:
        import vl_convert
    except ImportError:
        raise PipelineError(
            "vl-convert-python is not installed: `make sync` installs the lock"
        ) from None
    bundle = vl_convert.javascript_bundle(GLOBALS, VEGA_LITE)
    if "</script" in bundle:  # would end the inline script early
        raise PipelineError("vl-convert-python's bundle holds '</script': it cannot be inlined")
    return PAGE.replace("<bundle>", bundle)


def show(root: Path, out: Path | None = None) -> Path:
    """``dvc plots show`` in ``root`` into ``out`` (default ``root/dvc_plots``) through the
    offline page; the page's path."""
    out = (out or root / OUT_DIR).resolve()
    out.mkdir(parents=True, exist_ok=True)
    template = out / "offline-template.html"
    template.write_text(offline_page(), encoding="utf-8")
    page = out / "index.html"
    page.unlink(missing_ok=True)
    command = [sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template)]
    done = subprocess.run(
        [*command, "-o", str(out)], cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not page.is_file():
        reason = (done.stderr.strip().splitlines() or ["no plots were loaded"])[-1]
        raise PipelineError(f"{root}: dvc plots show wrote no page: {reason}")
    return page


# The headline figures of each stage's metrics files (``sop metrics --keys`` names others).
HEADLINES = {
    "pretrain": ["val_iou", "val_box_iou", "baseline_iou", "epochs"],
    "finetune": ["best_val_miou", "best_epoch", "convergence_epoch", "epochs"],
    "evaluate": ["test_miou", "test_pixel_accuracy", "best_val_miou"],
}


def _cell(value: Any, precision: int) -> str:
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    return "-" if value is None else str(value)


def metrics_table(folder: Path, keys: list[str], precision: int = 3) -> str:
    """A row per metrics file under ``folder`` (its path there, without .json) and a column per
    key, aligned; a key a file lacks shows as ``-``."""
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise PipelineError(f"{folder}: no metrics files (has the stage run?)")
    rows = [["file", *keys]]
    for path in files:
        record = json.loads(path.read_text())
        name = path.relative_to(folder).with_suffix("").as_posix()
        rows.append([name, *(_cell(record.get(key), precision) for key in keys)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)
