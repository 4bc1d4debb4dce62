"""A work directory is portable: copied or moved, it reads and extends its own stores from any folder; one
whose stores are missing is an error, never a new empty database. What sweep.json and MLflow record of it."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from helpers import assert_one_line_error, write_sweep_config
from mlflow import MlflowClient

from titk.analysis import load_study
from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep
from titk.sweep.serve import stores
from titk.sweep.storage import public_url, recorded_stores


@pytest.fixture(scope="module")
def original(tmp_path_factory, fixtures):
    tmp = tmp_path_factory.mktemp("portable")
    config = write_sweep_config(tmp, fixtures, n_trials=2, enqueue=[{"train.learning_rate": 0.05, "embedding.vectors": 2}],
                                objective={"metrics": {"norms.mean": 1.0}, "floors": {}, "pruner": "none", "eval_every": 3})
    run_sweep(load_sweep_config(config), workdir=tmp / "work", show_progress=False)
    return tmp, config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(workdir):
    return MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")


def test_sweep_json_records_stores_by_name(original):
    tmp, _ = original
    meta = json.loads((tmp / "work" / "sweep.json").read_text())
    assert (meta["storage"], meta["tracking_uri"]) == ("optuna.journal", "mlflow.db")
    assert str(tmp) not in json.dumps({k: v for k, v in meta.items() if k != "config"})


def test_a_moved_work_directory_reports_and_continues_on_its_own_files(original, tmp_path, run_cli, monkeypatch):
    tmp, config = original
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp / "work", copy)
    moved = tmp_path / "moved"  # the original goes away: nothing may still point at it
    shutil.move(str(tmp_path / "elsewhere"), moved)
    copy = moved / "copy"
    monkeypatch.chdir(tmp_path)

    code, out, err = run_cli("report", "moved/copy", "-o", "report.html")
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png") >= 2  # the trials' sample grids, read from the copy's own artifacts

    assert stores(copy) == ("tiny", str(copy.resolve() / "optuna.journal"), f"sqlite:///{copy.resolve() / 'mlflow.db'}")  # what titk serve opens
    code, out, err = run_cli("serve", "moved/copy", "--port", free_port(), "--dashboard-port", free_port(), "--check")
    assert code == 0, err
    assert "/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=titk" in out
    data = load_study(os.path.relpath(copy))
    assert len(data.finished) == 2
    assert not data.curves(("train.loss",)).empty
    client = _client(copy)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and all(r.info.artifact_uri.startswith(copy.resolve().as_uri() + "/mlruns/") for r in runs)

    # the copy goes on where the original stopped, and writes its new trial's artifacts into itself
    result = run_sweep(load_sweep_config(config), workdir=copy, n_trials=3, show_progress=False)
    assert len([t for t in result.study.trials if t.state.is_finished()]) == 3
    newest = max(_client(copy).search_runs([runs[0].info.experiment_id]), key=lambda r: r.info.start_time)
    assert (copy / "mlruns" / newest.info.run_id / "artifacts" / "samples.png").is_file()
    assert not (tmp / "work" / "mlruns" / newest.info.run_id).exists()


@pytest.mark.parametrize("missing", ["mlflow.db", "optuna.journal"])
def test_a_work_directory_without_its_stores_is_an_error(original, tmp_path, run_cli, missing):
    tmp, _ = original
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "work", copy)
    (copy / missing).unlink()
    code, _, err = run_cli("report", copy, "-o", tmp_path / "report.html")
    assert_one_line_error(code, err, missing, "missing")
    assert not (tmp_path / "report.html").exists()
    code, _, err = run_cli("serve", copy, "--port", free_port(), "--dashboard-port", free_port(), "--check")
    assert_one_line_error(code, err, missing, "missing")
    assert not (copy / missing).exists(), "a reader must not create an empty store"


def test_a_read_only_moved_copy_says_it_must_be_writable(original, tmp_path, run_cli):
    tmp, _ = original
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (chmod cannot make a folder read-only for root)")
    try:
        shutil.copytree(tmp / "work", mount / "copy")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        code, _, err = run_cli("report", mount / "copy", "-o", tmp_path / "report.html")
        # its artifact paths must be moved to the copy before anything reads them: that needs a write
        assert_one_line_error(code, err, "mlflow.db", "make the work directory writable")
        assert not (tmp_path / "report.html").exists()
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_study_from_before_relative_records_is_read_from_where_it_is_now(original, tmp_path):
    tmp, _ = original
    copy = tmp_path / "old"
    shutil.copytree(tmp / "work", copy)
    meta = json.loads((copy / "sweep.json").read_text())
    # what earlier versions wrote: absolute paths of a folder that no longer exists
    meta.update(storage="/gone/work/optuna.journal", tracking_uri="sqlite:////gone/work/mlflow.db")
    (copy / "sweep.json").write_text(json.dumps(meta))
    assert recorded_stores(copy, meta) == (None, None)
    assert len(load_study(copy).finished) >= 2


def test_passwords_never_reach_a_file():
    assert public_url("postgresql://titk:s3cret@db.example:5432/optuna") == "postgresql://titk@db.example:5432/optuna"
    assert public_url("http://me:pw@127.0.0.1:5000") == "http://127.0.0.1:5000"  # MLflow takes MLFLOW_TRACKING_USERNAME/PASSWORD
    assert public_url("https://me@mlflow.example/") == "https://mlflow.example/"
    assert public_url("postgresql://titk@db/optuna") == "postgresql://titk@db/optuna"
    assert public_url("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"


def test_the_mlflow_experiment_opens_on_the_study(original):
    tmp, _ = original
    client = _client(tmp / "work")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI traces page
    view = json.loads(experiment.tags["mlflow.sharedViewState.titk"])
    columns = view["selectedColumns"]
    # the objective, the metric it is made of, the headline metrics of the scorers run (norms has none), the searched settings
    assert columns[:3] == ["attributes.`Duration`", "metrics.`objective`", "metrics.`norms.mean`"]
    assert sorted(columns[3:]) == ["params.`search.embedding.vectors`", "params.`search.train.learning_rate`"]
    assert view["orderByKey"] == "metrics.`objective`" and view["orderByAsc"] is False
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("titk.role") == "study")
    assert view["runsExpanded"] == {parent.info.run_id: True}
    # every column the view names exists on the trial runs
    trial = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("titk.state") == "COMPLETE")
    for column in columns[1:]:
        kind, name = column.split(".", 1)
        assert name.strip("`") in (trial.data.metrics if kind == "metrics" else trial.data.params), column


def test_the_default_view_shows_the_headline_metrics_of_the_scorers_run(tmp_path, fixtures):
    from titk.sweep.runner import default_columns

    config = load_sweep_config(write_sweep_config(tmp_path, fixtures, evaluation={"scorers": ["identity", "norms"]},
                                                  objective={"metrics": {"identity.similarity": 1.0}, "floors": {"identity.detection_rate": 0.5}}))
    metrics = [name for kind, name in default_columns(config) if kind == "metrics"]
    assert metrics[:3] == ["objective", "identity.similarity", "identity.detection_rate"]
    assert "identity.ceiling" in metrics and "clip_t" not in metrics  # headlines only of the scorers this study runs


def test_optuna_dashboard_names_the_objective(original):
    tmp, _ = original
    study = load_study(tmp / "work").study
    assert study.metric_names == ["norms.mean"]


def test_the_sweep_says_which_trial_runs_and_leaks_no_experimental_warning(tmp_path, fixtures):
    config = write_sweep_config(tmp_path, fixtures, n_trials=1, enqueue=[{"train.learning_rate": 0.05, "embedding.vectors": 2}],
                                objective={"metrics": {"norms.mean": 1.0}, "floors": {}, "pruner": "none", "eval_every": 0})
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-W", "default", "-m", "titk", "sweep", str(config), "-w", str(tmp_path / "w")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trial 0 (1 of 1): vectors 2, learning_rate 0.05, 6 images" in done.stdout
    assert "scoring ohwx on the suite suite" in done.stdout  # the final evaluation's bar (the test's suite file is suite.yaml)
    assert "ExperimentalWarning" not in done.stderr, done.stderr[-2000:]
