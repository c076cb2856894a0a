"""The demo's time, stage by stage, and what orchestration costs in it.

Runs ``sop repro --params demo/params.yaml`` (what ``make demo`` runs) on a fresh copy of the
project's files (tracked and untracked, not ignored: no earlier outputs, no DVC cache) with
``SOP_TIMINGS`` set, so every stage process records when it started, how long the body of its
MLflow run took (the stage's work) and when it exited (``pipeline/timing.py``). Per stage
invocation, overhead = the process's life - its work: interpreter start, imports, Prefect's
flow run, opening and closing the MLflow run. What lies outside every stage process (DVC
checking and hashing between stages, the parent ``sop repro`` with its Prefect server and
MLflow parent run) is reported as its own line.

    python benchmarks/demo_stages.py                   # a fresh demo run, minutes
    python benchmarks/demo_stages.py --timings FILE    # tabulate an earlier run's SOP_TIMINGS file
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def copy_project(target: Path) -> None:
    """The project's files as a fresh clone has them (plus uncommitted edits)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            destination = target / name.decode()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    # DVC wants a git repository around it, as in a clone.
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for args in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "snapshot"]):
        subprocess.run(["git", *args], cwd=target, check=True)


def stage_name(argv: list[str]) -> str:
    """``finetune landcoverai resnet_demo-sop 0.25 0`` from a stage process's arguments."""
    args = [a for a in argv[1:] if not a.startswith("--") and not a.endswith(".yaml")]
    return " ".join([Path(argv[0]).stem, *args])


def tabulate(records: list[dict[str, Any]], total: float) -> dict[str, Any]:
    rows = []
    for record in sorted(records, key=lambda r: r["started"]):
        wall = record["exited"] - record["started"]
        work = sum(record["work"].values())
        rows.append(
            {
                "stage": stage_name(record["argv"]),
                "wall_s": round(wall, 2),
                "work_s": round(work, 2),
                "overhead_s": round(wall - work, 2),
            }
        )
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_kind[row["stage"].split()[0]].append(row)
    kinds = [
        {
            "stage": kind,
            "invocations": len(group),
            "wall_s": round(sum(r["wall_s"] for r in group), 1),
            "work_s": round(sum(r["work_s"] for r in group), 1),
            "overhead_s": round(sum(r["overhead_s"] for r in group), 1),
            "overhead_per_invocation_s": round(sum(r["overhead_s"] for r in group) / len(group), 2),
        }
        for kind, group in by_kind.items()
    ]
    ordered = sorted(records, key=lambda r: r["started"])
    between = sum(max(b["started"] - a["exited"], 0.0) for a, b in pairwise(ordered))
    in_stages = sum(r["wall_s"] for r in rows)
    overhead = sum(r["overhead_s"] for r in rows)
    outside = max(total - in_stages, 0.0)
    return {
        "total_s": round(total, 1),
        "stages": len(rows),
        "work_s": round(sum(r["work_s"] for r in rows), 1),
        "stage_overhead_s": round(overhead, 1),
        "outside_stages_s": round(outside, 1),
        # DVC's own work between two stages (checking, hashing, writing dvc.lock) ...
        "between_stages_s": round(between, 1),
        # ... and what happens once: start-up (Prefect server, MLflow parent run, stage host,
        # DVC loading the pipeline) and the end (the parent run's artifacts).
        "once_s": round(max(outside - between, 0.0), 1),
        "per_invocation_share": round((overhead + between) / total, 3) if total else None,
        "stage_overhead_share": round(overhead / total, 3) if total else None,
        "orchestration_share": round((overhead + outside) / total, 3) if total else None,
        "overhead_per_invocation_s": round(overhead / len(rows), 2) if rows else None,
        "kinds": kinds,
        "rows": rows,
    }


def from_timings(path: Path, total: float | None = None) -> dict[str, Any]:
    """Tabulate an earlier run's ``SOP_TIMINGS`` file; ``total`` defaults to its stages' span."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if total is None:
        total = max(r["exited"] for r in records) - min(r["started"] for r in records)
    figures = tabulate(records, total)
    figures["command"] = "make demo"
    figures["how"] = "after `make clean-demo` and removing demo/.dvc/cache (no outputs, no cache)"
    return figures


def run(work: Path | None = None) -> dict[str, Any]:
    """A fresh ``sop repro`` of the demo profile in a copy of the project; its timings."""
    work = work or Path(tempfile.mkdtemp(prefix="sop-bench-demo-"))
    project = work / "project"
    copy_project(project)
    timings = work / "timings.jsonl"
    env = {
        **os.environ,
        "SOP_TIMINGS": str(timings),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    sop = Path(sys.executable).parent / "sop"
    command = [str(sop), "repro", "--params", "demo/params.yaml", "--no-push"]
    print(f"running {' '.join(command[1:])} in {project}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, check=False)
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the demo failed (exit {done.returncode}); its output is above")
    records = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
    figures = tabulate(records, total)
    figures["command"] = " ".join(["sop", *command[1:]])
    figures["how"] = "on a fresh copy of the project (no outputs, no cache)"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timings", type=Path, help="an earlier run's SOP_TIMINGS file")
    parser.add_argument("--total", type=float, help="that run's wall seconds (with --timings)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    figures = from_timings(args.timings, args.total) if args.timings else run()
    for row in figures["rows"]:
        print(f"{row['stage']:50s} {row['wall_s']:7.1f} s  work {row['work_s']:7.1f} s")
    print(
        f"total {figures['total_s']} s: work {figures['work_s']} s, stage overhead "
        f"{figures['stage_overhead_s']} s ({figures['overhead_per_invocation_s']} s per "
        f"invocation), outside stages {figures['outside_stages_s']} s"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
