from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest

from pipeline import tracking


def git_repo(path: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return git("rev-parse", "HEAD")


def test_flatten_dotted_keys() -> None:
    flat = tracking.flatten({"data": {"tile_size": 512, "fractions": [1.0, 0.5]}, "seed": 0})
    assert flat == {"data.tile_size": "512", "data.fractions": "[1.0, 0.5]", "seed": "0"}


def test_stage_run_follows_the_conventions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = git_repo(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "tile@landcoverai")
    with tracking.stage_run(
        "pretrain",
        root=tmp_path,
        run_name="landcoverai-vits14-sop-0.25-s0",
        params={"pretrain": {"subimage_size": 112}},
        resolved_params_yaml="seed: 0\n",
        tile_index_hash="ab" * 32,
    ) as parent:
        pass
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.info.run_id)
    (tmp_path / "code.py").write_text("x = 2\n")  # an uncommitted edit: dirty
    with tracking.stage_run("pretrain", root=tmp_path, run_name="child", params={}) as child:
        pass

    assert (tmp_path / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sop-pretrain")
    assert experiment is not None
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    first = client.get_run(parent.info.run_id)
    assert first.info.run_name == "landcoverai-vits14-sop-0.25-s0"
    assert first.data.params == {"pretrain.subimage_size": "112", "sop.stage": "pretrain"}
    assert first.data.tags["git.commit"] == commit
    assert first.data.tags["git.dirty"] == "false"
    assert first.data.tags["dvc.stage"] == "tile@landcoverai"
    assert first.data.tags[tracking.TILE_INDEX_TAG] == "ab" * 32
    assert "mlflow.parentRunId" not in first.data.tags
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert artifacts == ["params.resolved.yaml"]
    second = client.get_run(child.info.run_id)
    assert second.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert second.data.tags["git.dirty"] == "true"


def test_tracking_uri_env_points_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    root = tmp_path / "pipeline"
    root.mkdir()
    assert tracking.tracking_uri(root) == shared
    assert tracking.artifact_location(root) is None
    with tracking.stage_run("tile", root=root, run_name="x", params={"a": 1}):
        pass
    assert not (root / "mlflow.db").exists()
    assert mlflow.MlflowClient(shared).get_experiment_by_name("sop-tile") is not None


def test_git_state_outside_a_repository(tmp_path: Path) -> None:
    assert tracking.git_state(tmp_path) == (None, None)


def test_opening_a_sqlite_store_is_serialised_between_processes(tmp_path: Path) -> None:
    import fcntl

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lock_file = tmp_path / "mlflow.db.lock"
    # flock is per open file: a second opening stands for another process.
    with (
        tracking.store_setup_lock(uri),
        open(lock_file) as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_file) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit


def test_a_tracking_server_needs_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with tracking.store_setup_lock("http://127.0.0.1:5000"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_client_is_made_under_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    # Making an MlflowClient opens the store (a new one gets its tables then): the lock must
    # be held at that moment, not only later.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    held = []

    def client(made_for: str) -> str:
        with open(tmp_path / "mlflow.db.lock") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return made_for

    monkeypatch.setattr(mlflow, "MlflowClient", client)
    assert tracking.open_client(uri) == uri
    assert held == [True]


def test_a_rewritten_dvc_lock_leaves_the_code_clean_and_an_edit_does_not(tmp_path: Path) -> None:
    git_repo(tmp_path)
    for lock in (tmp_path / "dvc.lock", tmp_path / "demo" / "dvc.lock"):
        lock.parent.mkdir(exist_ok=True)
        lock.write_text("schema: '2.0'\n")
        subprocess.run(["git", "add", str(lock)], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "locks"],
        cwd=tmp_path,
        check=True,
    )
    commit = tracking.git_state(tmp_path)[0]
    for lock in (tmp_path / "dvc.lock", tmp_path / "demo" / "dvc.lock"):
        lock.write_text("schema: '2.0'\nstages: {}\n")  # DVC rewrote the outputs' hashes
    # Asked from the demo's folder (a pipeline root below the repository's), as stages do.
    assert tracking.git_state(tmp_path / "demo") == (commit, False)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert tracking.git_state(tmp_path / "demo") == (commit, True)


CELL = {
    "dataset": "landcoverai",
    "backbone": "resnet50",
    "init": "sop",
    "fraction": 0.25,
    "seed": 0,
}


def test_run_labels_put_the_stage_and_what_differs_first() -> None:
    assert tracking.run_label("finetune", CELL) == "finetune sop 0.25 s0 · landcoverai resnet50"
    assert tracking.run_label("evaluate", CELL) == "evaluate sop 0.25 s0 · landcoverai resnet50"
    assert tracking.run_label("download", {"dataset": "loveda"}) == "download · loveda"
    assert tracking.run_label("weights", {"backbone": "vits14", "init": "seco"}) == (
        "weights seco · vits14"
    )
    assert tracking.run_label("report") == "report"
    # The UI's Run Name column shows about 24 characters: the cells of a grid differ there.
    cells = [
        {**CELL, "init": init, "fraction": fraction, "seed": seed}
        for init in ("random", "imagenet", "seco", "sop")
        for fraction in (0.01, 0.25, 1.0)
        for seed in (0, 1, 2)
    ]
    for stage in ("finetune", "evaluate"):
        heads = {tracking.run_label(stage, cell).split(" · ")[0] for cell in cells}
        assert len(heads) == len(cells)
        assert max(len(head) for head in heads) <= 25  # finetune imagenet 0.01 s0
        assert all(head.startswith(f"{stage} ") for head in heads)


def test_identity_is_params_and_tags_not_metrics(tmp_path: Path) -> None:
    with tracking.stage_run("finetune", root=tmp_path, params={"a": 1}, identity=CELL) as run:
        mlflow.log_metric("val_miou", 0.5, step=1)
    client = mlflow.MlflowClient(tracking.tracking_uri(tmp_path))
    logged = client.get_run(run.info.run_id)
    assert logged.info.run_name == "finetune sop 0.25 s0 · landcoverai resnet50"
    expected = {
        "sop.stage": "finetune",
        "sop.dataset": "landcoverai",
        "sop.backbone": "resnet50",
        "sop.init": "sop",
        "sop.fraction": "0.25",
        "sop.seed": "0",
    }
    assert logged.data.params == {"a": "1", **expected}
    assert expected.items() <= logged.data.tags.items()
    assert logged.data.metrics == {"val_miou": 0.5}
    # The documented filter for the fine-tuning runs' curves.
    found = client.search_runs([logged.info.experiment_id], "tags.sop.stage = 'finetune'")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_an_older_experiment_is_marked_a_training_one(tmp_path: Path) -> None:
    client = tracking.open_client(tracking.tracking_uri(tmp_path))
    made = client.create_experiment("sop-tile")
    with tracking.stage_run("tile", root=tmp_path, params={}, identity={"dataset": "x"}):
        pass
    experiment = client.get_experiment(made)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.TRAINING_KIND


def test_every_experiment_carries_the_shared_views_and_an_old_one_gets_them(
    tmp_path: Path,
) -> None:
    client = tracking.open_client(tracking.tracking_uri(tmp_path))
    made = client.create_experiment("sop-finetune")
    key = f"{tracking.SHARED_VIEW_TAG}finetune-curves"
    client.set_experiment_tag(made, key, '{"searchFilter": "an older view"}')
    with tracking.stage_run("finetune", root=tmp_path, params={}, identity={"dataset": "x"}):
        pass
    with tracking.parent_run(tmp_path, experiment_prefix="sop"):
        pass
    for name in ("sop-finetune", "sop"):
        tags = client.get_experiment_by_name(name).tags
        view = json.loads(tags[key])
        assert view["searchFilter"] == "tags.sop.stage = 'finetune'"
        assert "params.`sop.init`" in view["selectedColumns"]
        assert view["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "sop.backbone"}]
        assert view["runsHiddenMode"] == "SHOW_ALL"  # not the first 10 runs only
        assert view["chartsSearchFilter"] == "val_miou"
        evaluate = json.loads(tags[f"{tracking.SHARED_VIEW_TAG}evaluate-figures"])
        assert evaluate["searchFilter"] == "tags.sop.stage = 'evaluate'"


def test_the_views_addresses_name_the_experiment_and_create_no_store(tmp_path: Path) -> None:
    uri = tracking.tracking_uri(tmp_path)
    assert tracking.view_urls(uri, "http://h:1", "sop") == {}
    assert not (tmp_path / tracking.DB_FILE).exists()
    with tracking.parent_run(tmp_path, experiment_prefix="sop") as run:
        pass
    urls = tracking.view_urls(uri, "http://h:1", "sop")
    assert urls["finetune-curves"] == (
        f"http://h:1/#/experiments/{run.info.experiment_id}/runs?"
        "viewStateShareKey=finetune-curves&workflowType=machine_learning"
    )
    assert tracking.view_urls(uri, "http://h:1", "other") == {}


def test_a_training_summary_is_tags_and_json_not_metrics(tmp_path: Path) -> None:
    from pipeline.flows.training import log_summary

    metrics = {**CELL, "best_val_miou": 0.61, "best_epoch": 3, "convergence_epoch": None}
    result = {"seconds": 12.5, "processes": 1, "images_per_second": 40.0, "history": []}
    with tracking.stage_run("finetune", root=tmp_path, params={}, identity=CELL) as run:
        log_summary(metrics, result)
    client = mlflow.MlflowClient(tracking.tracking_uri(tmp_path))
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics == {}
    tags = logged.data.tags
    assert (tags["summary.best_val_miou"], tags["summary.best_epoch"]) == ("0.61", "3")
    assert tags["summary.convergence_epoch"] == "None"
    assert tags["run.seconds"] == "12.5"
    assert not {"summary.seed", "summary.fraction"} & set(tags)
    summary = mlflow.artifacts.load_dict(f"{logged.info.artifact_uri}/summary.json")
    assert summary["best_val_miou"] == 0.61
    assert summary["run"] == {"seconds": 12.5, "processes": 1.0, "images_per_second": 40.0}


def test_the_ui_url_opens_the_ml_view() -> None:
    assert tracking.ui_url("http://127.0.0.1:5000") == (
        "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
    assert tracking.ui_url("http://h:1/", "3") == (
        "http://h:1/#/experiments/3/runs?workflowType=machine_learning"
    )
