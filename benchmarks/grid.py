"""The demo grid on 1 and on 2 local workers: wall time, slot utilisation, scheduling overhead.

Each run is ``sop repro --params demo/params.yaml --workers N --threads 1`` on a fresh copy of
the project (no outputs, no DVC cache, so every stage runs), with each stage limited to one
CPU thread. The coordinator's timeline (``demo/.sop/grid-timeline.json``) gives, per stage
run: when the stage became ready (its last upstream stage noticed done), when it was submitted,
when the run started and ended (Prefect's own times) and when the coordinator noticed.

- grid wall: first submission to the last run noticed done (the data stages before and the
  final repro after are reported apart, in the command's total);
- utilisation: busy slot-seconds (each run, start to end) / (slots x grid wall);
- overhead per stage, median / 90th percentile: ready to submitted (the coordinator), from
  the later of submitted and its worker free to started (the work pool's pick-up and the run's
  process start: Prefect's "started" is when the flow run enters Running), and finished to
  noticed (the coordinator's polling).

    python benchmarks/grid.py                 # both runs, ~20 min on 2 cores
    python benchmarks/grid.py --workers 2     # one run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]

import demo_stages  # noqa: E402
import run as bench  # noqa: E402

TIMELINE = Path("demo/.sop/grid-timeline.json")
OVERHEADS = ("ready_to_submitted_s", "pick_up_s", "finished_to_noticed_s")  # median / p90


def measure(workers: int, threads: int) -> dict[str, Any]:
    """One fresh run of the demo grid on ``workers`` local workers."""
    with tempfile.TemporaryDirectory(prefix="sop-grid-bench-") as folder:
        project = Path(folder)
        demo_stages.copy_project(project)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        env.pop("PREFECT_API_URL", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        command = [str(Path(sys.executable).parent / "sop"), "repro", "--params"]
        command += ["demo/params.yaml", "--workers", str(workers), "--threads", str(threads)]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        total = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}")
        figures = summarise(json.loads((project / TIMELINE).read_text()), workers)
    return {**figures, "workers": workers, "threads": threads, "command_s": round(total, 1)}


def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return round(statistics.median(ordered), 2), round(p90, 2)


def pick_up_delays(attempts: list[dict[str, Any]]) -> list[float]:
    """Per run: started - when it could have started (ready, and its worker free: the end of
    that worker's previous run). Waiting for a busy slot is the grid's shape, not overhead."""
    free: dict[str, float] = {}
    delays = []
    for attempt in sorted(attempts, key=lambda a: a["started"]):
        could = max(attempt["ready"], free.get(attempt["worker"], attempt["ready"]))
        delays.append(attempt["started"] - could)
        free[attempt["worker"]] = attempt["ended"]
    return delays


def summarise(record: dict[str, Any], slots: int) -> dict[str, Any]:
    attempts = [a for a in record["attempts"] if a["started"] and a["ended"]]
    begin = min(a["submitted"] for a in record["attempts"])
    end = max(a["noticed"] for a in attempts)
    wall = end - begin
    busy = sum(a["ended"] - a["started"] for a in attempts)
    return {
        "stages": len(attempts),
        "grid_wall_s": round(wall, 1),
        "busy_slot_s": round(busy, 1),
        "utilisation": round(busy / (slots * wall), 3),
        "ready_to_submitted_s": _quantiles([a["submitted"] - a["ready"] for a in attempts]),
        "pick_up_s": _quantiles(pick_up_delays(attempts)),
        "finished_to_noticed_s": _quantiles([a["noticed"] - a["ended"] for a in attempts]),
    }


def render(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    rows = [
        {
            **r,
            "utilisation": f"{r['utilisation']:.0%}",
            **{key: "{} / {}".format(*r[key]) for key in OVERHEADS},
        }
        for r in runs
    ]
    columns = [
        ("workers", "workers"),
        ("stages", "grid stages"),
        ("grid_wall_s", "grid wall s"),
        ("busy_slot_s", "busy slot-s"),
        ("utilisation", "utilisation"),
        ("ready_to_submitted_s", "ready to submitted s"),
        ("pick_up_s", "submitted, slot free to started s"),
        ("finished_to_noticed_s", "finished to noticed s"),
        ("command_s", "whole command s"),
    ]
    lines = [
        "## CPU: the demo grid on local workers (`benchmarks/grid.py`)",
        "",
        f"- Date: {info['date']}; commit {info['commit']}; {info['machine']['cpu']}, "
        f"{info['machine']['cores']}",
        "- Command: `sop repro --params demo/params.yaml --workers N --threads 1` on a fresh copy",
        "",
        bench.table(rows, columns),
        "",
        "Overheads per stage in seconds, median / 90th percentile.",
    ]
    if len(runs) == 2:
        speedup = runs[0]["grid_wall_s"] / runs[1]["grid_wall_s"]
        lines += ["", f"Speed-up of the grid at {runs[1]['workers']} workers: {speedup:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=bench.RESULTS)
    args = parser.parse_args()
    runs = [measure(n, args.threads) for n in args.workers]
    for figures in runs:
        print(json.dumps(figures))
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": bench.machine(),
        "commit": bench.git_commit(),
    }
    bench.update_section(args.out, "grid", render(runs, info))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
