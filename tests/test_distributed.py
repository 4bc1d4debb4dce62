"""Many machines, simulated on loopback: Optuna on a real PostgreSQL server that asks for a password, a real
`mlflow server`, two `titk worker` processes on one study, one of them killed with SIGKILL in the middle of a
trial; then the study reported on from a work directory and from URIs, with the password only in a
libpq password file."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import optuna
import pytest
from helpers import write_sweep_config
from nbclient import NotebookClient
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from titk.analysis import load_study

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; a root test runs its server as the postgres user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


PASSWORD = "pg-s3cret-word"


@pytest.fixture(scope="module")
def postgres():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh --dev installs it with apt-get)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="titk-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    # connections over TCP need the password, as a shared database server would
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                                 f"--pwfile={pwfile}", "-E", "UTF8"]), check=True, capture_output=True)
    pwfile.unlink()
    # libpq's password file: what every process of the test (workers, the MLflow server, readers) uses
    pgpass = Path(tempfile.mkdtemp(prefix="titk-pgpass-")) / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:postgres:{PASSWORD}\n")
    pgpass.chmod(0o600)
    previous = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(pgpass)
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                 f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}", "start"]), check=True, capture_output=True)
    try:
        for db in ("optuna", "mlflow"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", f"create database {db};"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if previous is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = previous
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    port = free_port()
    artifacts = tmp_path_factory.mktemp("artifacts")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"{postgres}/mlflow",
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_two_workers_one_killed(postgres, mlflow_server, fixtures, tmp_path, run_cli, monkeypatch):
    config = write_sweep_config(
        tmp_path, fixtures, study="distributed", n_trials=5, heartbeat_seconds=2, enqueue=[],
        retrain_duplicates=True,  # distinct settings must come from the workers' own sampler seeds
        base__train__max_steps=60, base__train__learning_rate="0.01",
        space={"train.learning_rate": {"low": 0.001, "high": 0.1, "log": True}},
        objective={"metrics": {"norms.mean": 1.0}, "floors": {}, "pruner": "none", "eval_every": 0},
    )
    storage_url = f"{postgres}/optuna"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    titk = [sys.executable, "-m", "titk"]
    common = ["--storage", storage_url, "--tracking-uri", mlflow_server]
    # a user may type the password into the URL once; it is used, and never written down
    with_password = storage_url.replace("postgres@", f"postgres:{PASSWORD}@")
    created = subprocess.run([*titk, "sweep", str(config), "-w", str(tmp_path / "w0"), "--storage", with_password, "--tracking-uri", mlflow_server,
                              "--create-only"], env={**env, "PGPASSFILE": "/nonexistent"}, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in (1, 2)]
    workers = [
        subprocess.Popen([*titk, "worker", str(config), "-w", str(tmp_path / f"w{i}"), *common], env=env, stdout=logs[i - 1], stderr=subprocess.STDOUT)
        for i in (1, 2)
    ]
    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.load_study(study_name="distributed", storage=storage)
    victim = workers[0]
    deadline = time.monotonic() + 240
    killed_trial = None
    while time.monotonic() < deadline and killed_trial is None:
        for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
            if t.user_attrs.get("titk.pid") == victim.pid and t.user_attrs.get("mlflow_run_id"):
                time.sleep(1.0)  # well inside the trial
                victim.send_signal(signal.SIGKILL)
                killed_trial = t.number
                break
        time.sleep(0.3)
    assert killed_trial is not None, "worker 1 never started a trial"
    victim.wait(timeout=30)
    survivor = workers[1]
    survivor.wait(timeout=420)
    for log in logs:
        log.close()
    assert survivor.returncode == 0, (tmp_path / "worker2.log").read_text()[-3000:]

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert by_number[killed_trial].state == TrialState.FAIL  # failed by the survivor's heartbeat check
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed_trial]
    assert len(retries) == 1 and retries[0].params == by_number[killed_trial].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "duplicate_of" not in t.user_attrs]
    assert len(finished) == 5
    settings = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(settings)) == len(settings), "two workers trained the same settings"  # each draws its own sampler seed
    # every trial is accounted for: finished, or failed with a retry
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED) or any(RetryHeartbeatStaleTrialCallback.retried_trial_number(r) == t.number for r in trials)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("distributed")
    runs = client.search_runs([experiment.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("titk.role") == "trial"]
    killed_run = next(r for r in trial_runs if r.info.run_id == by_number[killed_trial].user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "FAILED" and "stopped beating" in killed_run.data.tags["titk.reason"]
    assert sum(r.info.status == "FINISHED" for r in trial_runs) == 5
    assert len([r for r in runs if r.data.tags.get("titk.role") == "study"]) == 1  # one parent run, shared
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {next(r.info.run_id for r in runs if r.data.tags.get("titk.role") == "study")}

    # Reported on: from the work directory the study was created from, with the password only in libpq's file
    record = (tmp_path / "w2" / "sweep.json").read_text()  # a worker's work directory, as docs/many-machines.md shows
    assert json.loads(record)["storage"] == storage_url and json.loads(record)["tracking_uri"] == mlflow_server
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()], "a password was written to disk"
    code, _, err = run_cli("report", tmp_path / "w2", "-o", tmp_path / "report.html")
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert "distributed" in page and page.count("data:image/png") >= 3
    code, _, err = run_cli("report", "--study", "distributed", "--storage", storage_url, "--tracking-uri", mlflow_server, "-o", tmp_path / "by-uri.html")
    assert code == 0, err
    assert "distributed" in (tmp_path / "by-uri.html").read_text()
    # titk serve on the same work directory: optuna-dashboard on the PostgreSQL study, the tracking server's own UI
    code, out, err = run_cli("serve", tmp_path / "w2", "--port", free_port(), "--dashboard-port", free_port(), "--check")
    assert code == 0, err
    assert f"MLflow UI: {mlflow_server}/#/experiments/{experiment.experiment_id}/runs?" in out and "optuna-dashboard: http://127.0.0.1:" in out
    # ... and from its URIs alone, as the notebooks take them
    data = load_study(study="distributed", storage=storage_url, tracking_uri=mlflow_server)
    assert len(data.finished) == 5 and not data.curves(("train.loss",)).empty
    monkeypatch.setenv("TITK_STORAGE", storage_url)
    monkeypatch.setenv("TITK_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("TITK_STUDY", "distributed")
    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "sweep-overview.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
