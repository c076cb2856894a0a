"""The ``paper`` flow: one MLflow parent run per ``dvc repro``, ``sop repro``, the Prefect
deployment. Unit tests first; the slow tier runs DVC against real MLflow and Prefect servers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import layout, tracking
from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.flows import grid, paper

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = ["synth", "download@landcoverai"]
STAMPED = re.compile(r"repro-\d{8}T\d{6}Z")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def committed_repo(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "code.py").write_text("x = 1\n")
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    return git(path, "rev-parse", "HEAD")


# --- unit tests ---------------------------------------------------------------------------


def test_parent_run_nests_stage_runs_and_restores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = committed_repo(tmp_path)
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "outer-run")  # restored, and not our parent
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    with tracking.parent_run(tmp_path, targets=TARGETS, experiment_prefix="sop-x") as parent:
        parent_id = parent.info.run_id
        assert os.environ[tracking.PARENT_RUN_ENV] == parent_id
        assert os.environ["MLFLOW_TRACKING_URI"] == db  # what the stage processes inherit
        with tracking.stage_run(
            "tile", root=tmp_path, run_name="landcoverai", params={}, experiment_prefix="sop-x"
        ) as child:
            pass
    assert os.environ[tracking.PARENT_RUN_ENV] == "outer-run"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.delenv(tracking.PARENT_RUN_ENV)
    with tracking.stage_run(
        "tile", root=tmp_path, run_name="alone", params={}, experiment_prefix="sop-x"
    ) as alone:
        pass

    client = mlflow.MlflowClient(db)
    experiment = client.get_experiment_by_name("sop-x")
    assert experiment is not None
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    run = client.get_run(parent_id)
    assert run.info.experiment_id == experiment.experiment_id
    assert STAMPED.fullmatch(run.info.run_name)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["sop.stage"] == "grid"
    assert tags["dvc.targets"] == "synth download@landcoverai"
    assert tags["git.commit"] == commit
    assert tags["git.dirty"] == "false"
    assert "mlflow.parentRunId" not in tags
    nested = client.get_run(child.info.run_id)
    assert nested.info.experiment_id == experiment.experiment_id
    assert nested.data.tags["mlflow.parentRunId"] == parent_id
    # Without a parent, a stage run goes to its per-stage experiment, as before.
    single = client.get_run(alone.info.run_id)
    tile_experiment = client.get_experiment_by_name("sop-x-tile")
    assert tile_experiment is not None
    assert single.info.experiment_id == tile_experiment.experiment_id
    assert "mlflow.parentRunId" not in single.data.tags


def test_parent_run_fails_with_its_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    with (
        pytest.raises(PipelineError, match="boom"),
        tracking.parent_run(tmp_path, run_name="repro-x") as parent,
    ):
        raise PipelineError("boom")
    assert tracking.PARENT_RUN_ENV not in os.environ
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(parent.info.run_id)
    assert (run.info.run_name, run.info.status) == ("repro-x", "FAILED")
    assert run.data.tags["dvc.targets"] == "(all)"
    assert "git.commit" not in run.data.tags  # not a git repository


def test_unknown_parent_run_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "0" * 32)
    with (
        pytest.raises(PipelineError, match=r"^SOP_PARENT_RUN_ID=0{32}: no such run at sqlite"),
        tracking.stage_run("tile", root=tmp_path, run_name="x", params={}),
    ):
        pass


def test_utc_stamp() -> None:
    from datetime import datetime, timedelta, timezone

    local = datetime(2026, 1, 5, 15, 25, 1, tzinfo=timezone(timedelta(hours=1)))
    assert tracking.utc_stamp(local) == "20260105T142501Z"


def test_parse_remotes() -> None:
    assert paper.parse_remotes("") == []
    assert paper.parse_remotes("\n") == []
    listing = "storage\ts3://bucket/sop\t(default)\nbackup\t/mnt/backup\n"
    assert paper.parse_remotes(listing) == ["storage", "backup"]


def test_project_dir(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    with pytest.raises(PipelineError, match=r"no dvc\.yaml; the project is the folder"):
        paper.project_dir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert paper.project_dir(tmp_path) == tmp_path.resolve()
    assert paper.project_dir(tmp_path / "params.yaml") == tmp_path.resolve()
    with pytest.raises(PipelineError, match=r"no params\.yaml or dvc\.yaml"):
        paper.project_dir(tmp_path / "elsewhere")


def in_results(name: str) -> str:
    """A file of the report stage's folder as logged to MLflow: its path in the project."""
    return (layout.results_dir(Path()) / name).as_posix()


def test_outputs_and_figures_logged_to_the_parent(tmp_path: Path) -> None:
    results = layout.results_dir(tmp_path)
    results.mkdir()
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (results / "report.md").write_text("# report\n")
    (results / layout.RESULTS_TABLE).write_text(
        "dataset,backbone,init,label_fraction,seed,best_val_miou,epoch_to_threshold,test_miou\n"
        "landcoverai,resnet_demo,random,1.0,0,0.5,3,0.4\n"
        "landcoverai,resnet_demo,sop,1.0,0,0.7,,0.6\n"
        "landcoverai,resnet_demo,sop,0.5,0,,,nan\n"
    )
    (results / "curves_landcoverai_resnet_demo.png").write_bytes(b"\x89PNG")
    (results / "notes.txt").write_text("not an output of the report stage\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id

    logged, metrics = paper.log_outputs(client, run_id, tmp_path)

    assert logged == [
        in_results("report.md"),
        in_results(layout.RESULTS_TABLE),
        in_results("curves_landcoverai_resnet_demo.png"),
        "params.yaml",
    ]
    assert metrics == pytest.approx(
        {
            "results.cells": 3.0,
            "results.test_miou_mean": 0.5,
            "results.test_miou_max": 0.6,
            "results.best_val_miou_mean": 0.6,
            "results.best_val_miou_max": 0.7,
        }
    )
    assert client.get_run(run_id).data.metrics == pytest.approx(metrics)
    assert [a.path for a in client.list_artifacts(run_id)] == ["params.yaml", layout.RESULTS_DIR]
    assert sorted(a.path for a in client.list_artifacts(run_id, layout.RESULTS_DIR)) == [
        in_results("curves_landcoverai_resnet_demo.png"),
        in_results("report.md"),
        in_results(layout.RESULTS_TABLE),
    ]


def test_nothing_to_log_without_results(tmp_path: Path) -> None:
    assert paper.report_files(tmp_path) == []
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert paper.report_files(tmp_path) == [tmp_path / "params.yaml"]


def test_use_checkout_pull_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setenv("SOP_CHECKOUT", str(checkout))
    assert paper.use_checkout() == {"directory": str(checkout.resolve())}
    assert Path.cwd() == checkout.resolve()
    monkeypatch.delenv("SOP_CHECKOUT")
    assert paper.use_checkout(default=str(tmp_path)) == {"directory": str(tmp_path.resolve())}
    with pytest.raises(PipelineError, match=r"/nowhere: no such folder \(\$SOP_CHECKOUT"):
        paper.use_checkout(default="/nowhere")


def test_prefect_yaml_declares_the_paper_deployment() -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment, stage = spec["deployments"]
    assert deployment["name"] == "paper"
    assert stage["name"] == "stage"  # pipeline.flows.grid submits runs of it
    assert load_flow_from_entrypoint(str(REPO / stage["entrypoint"])).name == "stage"
    assert f"{load_flow_from_entrypoint(str(REPO / stage['entrypoint'])).name}/{stage['name']}" == (
        grid.STAGE_DEPLOYMENT
    )
    assert stage["work_pool"]["name"] == "gpu"
    assert load_flow_from_entrypoint(str(REPO / deployment["entrypoint"])).name == "paper"
    assert deployment["work_pool"]["name"] == "gpu"
    assert deployment["concurrency_limit"] == 1
    assert deployment["parameters"] == {"project": "."}
    (schedule,) = deployment["schedules"]
    assert schedule["timezone"] == "UTC"
    assert len(schedule["cron"].split()) == 5
    ((step, inputs),) = spec["pull"][0].items()
    assert import_object(step) is paper.use_checkout
    assert inputs == {"variable": "SOP_CHECKOUT", "default": "/work"}


def test_repro_command_help_and_params_name() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["repro", "--help"])
    assert result.exit_code == 0, result.output
    for word in ("--push", "--no-push", "--params", "[targets]..."):
        assert word in result.output.lower()
    result = runner.invoke(app, ["repro", "--params", "other.yaml"])
    assert result.exit_code == 2
    assert "other.yaml: DVC stages read params.yaml" in result.output


def test_repro_of_a_folder_that_is_no_project_names_it_and_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = CliRunner().invoke(app, ["repro", "--params", str(missing / "params.yaml")])
    assert result.exit_code == 2
    assert f"{missing.resolve()}: no params.yaml or dvc.yaml" in result.output
    assert list(tmp_path.iterdir()) == []  # no .sop/ for the stage host, no folder


# --- slow tier: DVC, a real MLflow server, a real Prefect server ----------------------------


def demo_checkout(dest: Path, *extra: str, remote: Path | None = None) -> Path:
    """The repository's layout with a smaller demo profile (as tests/test_pipeline_e2e.py),
    committed to git with DVC initialised in demo/ (``remote``: its default DVC remote);
    returns demo/."""
    for item in ("pipeline", "stages"):
        shutil.copytree(REPO / item, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
    for item in extra:
        shutil.copy(REPO / item, dest / item)
    demo = dest / "demo"
    demo.mkdir()
    params = yaml.safe_load((REPO / "demo" / "params.yaml").read_text())
    params["synthetic"].update(scenes=2, height=1100, width=1200)
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "demo" / "dvc.yaml", demo / "dvc.yaml")
    git(dest, "init", "-q")
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--subdir", "-q"], cwd=demo, check=True, timeout=120
    )
    if remote is not None:
        subprocess.run(
            [sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(remote)],
            cwd=demo,
            check=True,
            timeout=120,
        )
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "demo")
    return demo


@pytest.mark.slow
def test_dvc_remotes_of_a_project(tmp_path: Path) -> None:
    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, check=True, timeout=120)

    dvc("init", "--no-scm", "-q")
    assert paper.dvc_remotes(tmp_path) == []
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"))
    assert paper.dvc_remotes(tmp_path) == ["store"]
    (tmp_path / ".dvc" / "config").write_text("[core\n")  # unreadable config
    with pytest.raises(PipelineError, match=r"^`dvc remote list` exited with \d+ in "):
        paper.dvc_remotes(tmp_path)


def prefect_call(api: str, path: str, body: bytes | None = None) -> Any:
    """GET (or POST ``body`` to) the Prefect API's ``path``; the decoded JSON."""
    request = urllib.request.Request(
        f"{api}{path}",
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def flow_runs(api: str) -> list[dict[str, Any]]:
    """Every flow run on the server, each with its flow's name under ``flow``."""
    runs: list[dict[str, Any]] = prefect_call(api, "/flow_runs/filter", b"{}")
    names = {r["flow_id"]: prefect_call(api, f"/flows/{r['flow_id']}")["name"] for r in runs}
    return [{**r, "flow": names[r["flow_id"]]} for r in runs]


def expected_prefix(demo: Path) -> str:
    prefix: str = yaml.safe_load((demo / "params.yaml").read_text())["tracking"][
        "experiment_prefix"
    ]
    return prefix


@pytest.mark.slow
def test_paper_flow_against_mlflow_and_prefect_servers(
    mlflow_tracking_server: str,
    prefect_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    demo = demo_checkout(tmp_path / "checkout")
    commit = git(demo, "rev-parse", "HEAD")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_server)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        summary = paper.paper_flow(str(demo), TARGETS)

    assert (layout.raw_dir(demo, "landcoverai") / layout.SOURCE_FILE).is_file()
    assert not (demo / "mlflow.db").exists()  # all of it on the server
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_tracking_server
    assert tracking.PARENT_RUN_ENV not in os.environ
    assert summary["targets"] == TARGETS
    assert summary["pushed"] is False  # no DVC remote
    assert summary["artifacts"] == ["params.yaml"]  # the report stage did not run
    assert summary["metrics"] == {}

    client = mlflow.MlflowClient(mlflow_tracking_server)
    prefix = expected_prefix(demo)
    experiment = client.get_experiment_by_name(prefix)
    assert experiment is not None
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`sop.stage` = 'grid'"
    )
    assert parent.info.run_id == summary["parent_run_id"]
    assert STAMPED.fullmatch(parent.info.run_name)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dvc.targets"] == "synth download@landcoverai"
    assert parent.data.tags["dvc.pushed"] == "false"
    assert parent.data.tags["git.commit"] == commit
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["params.yaml"]

    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_stage = {run.data.tags["dvc.stage"]: run for run in children}
    assert sorted(by_stage) == sorted(TARGETS)
    download = by_stage["download@landcoverai"]
    assert (download.info.run_name, download.info.status) == ("download · landcoverai", "FINISHED")
    assert download.data.tags["sop.stage"] == "download"
    assert download.data.params["data.sources.landcoverai.url"] == "archive/landcover.ai.v1.zip"
    # Checked against the md5 the synth stage recorded, through the real md5 path.
    assert download.data.params["data.sources.landcoverai.md5_file"] == (
        "archive/landcover.ai.v1.zip.md5"
    )
    assert download.data.metrics["seconds"] > 0
    assert {a.path for a in client.list_artifacts(download.info.run_id)} >= {
        "params.resolved.yaml",
        "sources.json",
    }
    synth = by_stage["synth"]
    assert synth.info.run_name == "synthesize landcover.ai.v1.zip"
    assert synth.data.params["synthetic.scenes"] == "2"
    assert sum(v for k, v in synth.data.metrics.items() if k.startswith("tiles.")) > 0
    # Children live in the parent's experiment, not in the per-stage ones.
    assert client.get_experiment_by_name(f"{prefix}-download") is None

    # The stage processes joined this server instead of starting their own.
    assert "Starting temporary server" not in "".join(capfd.readouterr())
    states = {(r["flow"], r["name"]): r["state_type"] for r in flow_runs(prefect_api)}
    assert states[("synthesize", "synthesize-landcover.ai.v1.zip")] == "COMPLETED"
    assert states[("download", "download-landcoverai")] == "COMPLETED"
    assert [s for (flow, _), s in states.items() if flow == "paper"] == ["COMPLETED"]
    runs = flow_runs(prefect_api)
    (paper_run,) = [r for r in runs if r["flow"] == "paper"]
    assert parent.data.tags["prefect.flow_run_id"] == paper_run["id"]
    # Named as the MLflow parent run; every stage's flow run is its subflow run, and tagged so.
    assert paper_run["name"] == parent.info.run_name
    stage_runs = [r for r in runs if r["flow"] != "paper"]
    assert sorted(r["flow"] for r in stage_runs) == ["download", "synthesize"]
    for run in stage_runs:
        assert run["parent_task_run_id"] is not None, run["name"]
        tracking_task = prefect_call(prefect_api, f"/task_runs/{run['parent_task_run_id']}")
        assert tracking_task["flow_run_id"] == paper_run["id"]
        assert tracking_task["state"]["state_details"]["child_flow_run_id"] == run["id"]
        assert parent.info.run_name in run["tags"]


@pytest.mark.slow
def test_failed_repro_is_one_line_and_fails_the_parent(
    mlflow_tracking_server: str, prefect_api: str, tmp_path: Path
) -> None:
    demo = demo_checkout(tmp_path / "checkout")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_tracking_server,
        "PREFECT_API_URL": prefect_api,
    }
    result = subprocess.run(
        [str(BIN / "sop"), "repro", "no-such-stage", "--params", str(demo / "params.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert re.fullmatch(
        rf"error: `dvc repro no-such-stage` exited with \d+ in {re.escape(str(demo))}: "
        "its error is in its output above",
        errors[0],
    )
    assert "Traceback" not in result.stderr
    client = mlflow.MlflowClient(mlflow_tracking_server)
    experiment = client.get_experiment_by_name(expected_prefix(demo))
    assert experiment is not None
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`dvc.targets` = 'no-such-stage'"
    )
    assert parent.info.status == "FAILED"
    assert parent.data.tags["sop.stage"] == "grid"
    assert not (demo / "archive").exists()


@pytest.mark.slow
def test_a_failing_stages_error_is_in_the_paper_runs_log(
    mlflow_tracking_server: str,
    prefect_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stage's own one-line error, not only DVC's exit code: in the paper run's error
    and in its log on the server (DVC's output reaches the terminal only)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    demo = demo_checkout(tmp_path / "checkout")
    params = yaml.safe_load((demo / "params.yaml").read_text())
    source = params["data"]["sources"]["landcoverai"]
    source.pop("md5_file")
    source["md5"] = "0" * 32  # not the archive's: the download stage stops on it
    (demo / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_server)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api}),
        pytest.raises(PipelineError) as raised,
    ):
        paper.paper_flow(str(demo), TARGETS)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        APILogWorker.drain_all(timeout=10)
    message = str(raised.value)
    assert "\n" not in message
    assert re.search(r"exited with \d+ in .*: download@landcoverai: .*md5", message), message
    stage_line = message[message.index("download@landcoverai: ") :]
    runs = [r for r in flow_runs(prefect_api) if r["flow"] == "paper"]
    # This test's run: the server is the module's, and other tests' paper runs fail too.
    (failed,) = [
        r for r in runs if r["state_type"] == "FAILED" and r["parameters"]["project"] == str(demo)
    ]
    body = json.dumps({"logs": {"flow_run_id": {"any_": [failed["id"]]}}}).encode()
    logs = prefect_call(prefect_api, "/logs/filter", body)
    logged = {entry["message"]: entry["level"] for entry in logs}
    assert logged.get(f"stage failed: {stage_line}") == logging.ERROR, logged
    assert not list(layout.state_dir(demo).glob("stage-errors-*"))


def prefect(cwd: Path, env: dict[str, str], *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(BIN / "prefect"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _scheduled_runs(client: Any, deployment_id: Any, wait_s: float = 90) -> list[Any]:
    """Expected start times (UTC) of the deployment's SCHEDULED runs, once the server's
    scheduler (every few seconds in the test server) has made some."""
    import time
    from datetime import UTC

    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + wait_s
    while True:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        if runs or time.monotonic() > deadline:
            return [r.expected_start_time.astimezone(UTC) for r in runs]
        time.sleep(2)


@pytest.mark.slow
def test_paper_deployment_runs_on_a_gpu_pool_worker(prefect_api: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    checkout = tmp_path / "checkout"
    demo = demo_checkout(checkout, "prefect.yaml", remote=tmp_path / "remote")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    env.pop("MLFLOW_TRACKING_URI", None)  # the demo's own sqlite file
    prefect(checkout, env, "work-pool", "create", "gpu", "--type", "process")
    deploy = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "paper"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    output = deploy.stdout + deploy.stderr
    assert deploy.returncode == 0, output
    assert "Deployment 'paper/paper' successfully created" in output, output

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api}),
        get_client(sync_client=True) as client,
    ):
        deployment = client.read_deployment_by_name("paper/paper")
        assert deployment.entrypoint == "pipeline/flows/paper.py:paper_flow"
        assert deployment.work_pool_name == "gpu"
        assert client.read_work_pool("gpu").type == "process"
        (schedule,) = deployment.schedules
        assert schedule.active
        assert isinstance(schedule.schedule, CronSchedule)
        assert schedule.schedule.cron == "0 2 * * 6"
        assert schedule.schedule.timezone == "UTC"
        assert deployment.global_concurrency_limit is not None
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.parameters == {"project": "."}
        assert deployment.pull_steps == [
            {"pipeline.flows.paper.use_checkout": {"variable": "SOP_CHECKOUT", "default": "/work"}}
        ]
        # The server's scheduler turns the cron into runs: Saturdays, 02:00 UTC.
        scheduled = _scheduled_runs(client, deployment.id)
        assert scheduled, "the scheduler created no run from the cron schedule"
        for start in scheduled:
            assert (start.weekday(), start.hour, start.minute) == (5, 2, 0), start
        # "demo" is relative: it resolves in the checkout the pull step moves to.
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"project": "demo", "targets": TARGETS}
        )

    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    worker_output = prefect(
        worker_dir,
        {**env, "SOP_CHECKOUT": str(checkout)},
        "worker",
        "start",
        "--pool",
        "gpu",
        "--run-once",
        timeout=300,
    )
    assert "Executing deployment step: use_checkout" in worker_output
    # DVC's stage process, its flow run a subflow run of the deployment's paper run
    assert "Beginning subflow run 'download-landcoverai'" in worker_output
    assert "Starting temporary server" not in worker_output

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api}),
        get_client(sync_client=True) as client,
    ):
        finished = client.read_flow_run(run.id)
    assert finished.state is not None
    assert finished.state.type.value == "COMPLETED", finished.state
    assert finished.parameters == {"project": "demo", "targets": TARGETS}
    assert (layout.raw_dir(demo, "landcoverai") / layout.SOURCE_FILE).is_file()
    assert not (worker_dir / "demo").exists()

    tracked = mlflow.MlflowClient(f"sqlite:///{demo / 'mlflow.db'}")
    experiment = tracked.get_experiment_by_name(expected_prefix(demo))
    assert experiment is not None
    (parent,) = tracked.search_runs(
        [experiment.experiment_id], filter_string="tags.`sop.stage` = 'grid'"
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == str(run.id)
    assert parent.data.tags["dvc.pushed"] == "true"  # push=None and the project has a remote
    children = tracked.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(c.data.tags["dvc.stage"] for c in children) == sorted(TARGETS)
