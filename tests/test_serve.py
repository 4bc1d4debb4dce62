"""titk serve as a real process: SIGTERM and SIGHUP stop both servers and their workers, a server that dies
is reported with its log, a busy port is named, a relative work directory works from any folder; and the
MLflow UI, rendered by headless Chromium, shows the study's trials and their metrics."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import assert_one_line_error, write_sweep_config
from PIL import Image

from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TITK = Path(sys.executable).parent / "titk"
CHROMIUM = Path("/usr/bin/chromium")
START = 180  # seconds for both servers to answer: mlflow imports slowly on a busy machine
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, fixtures):
    """A finished two-trial sweep, run from its own folder with a relative work directory as a user would."""
    tmp = tmp_path_factory.mktemp("serve")
    config = load_sweep_config(write_sweep_config(tmp, fixtures, n_trials=2, enqueue=[
        {"train.learning_rate": 0.05, "embedding.vectors": 2}, {"train.learning_rate": 0.04, "embedding.vectors": 2}]))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        run_sweep(config, workdir=Path("work"), show_progress=False)
    (tmp / "elsewhere").mkdir()
    (tmp / "home").mkdir()
    return tmp


def env(tmp):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp / "home"), "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_ports(n=2):
    ports = set()
    while len(ports) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.add(sock.getsockname()[1])
    return sorted(ports)


def answers(url):
    try:
        with LOOPBACK.open(url, timeout=2) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError):
        return False


def listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_serve(tmp):
    """`titk serve ../work` from another folder, once it says both serve and both URLs answer: the process,
    its ports, its descendants. Its stdout goes to a file, read as it is written."""
    port, dashboard = free_ports()
    out = tmp / f"serve-{port}.out"
    with open(out, "w") as stdout:
        proc = subprocess.Popen([str(TITK), "serve", "../work", "--port", str(port), "--dashboard-port", str(dashboard)],
                                cwd=tmp / "elsewhere", env=env(tmp), stdout=stdout, stderr=subprocess.PIPE, text=True)
    proc.out = out
    deadline = time.monotonic() + START
    while not ("Ctrl-C stops both" in out.read_text() and answers(f"http://127.0.0.1:{port}/health") and answers(f"http://127.0.0.1:{dashboard}")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"titk serve did not start both servers (status {proc.returncode}):\n{out.read_text()}\n{err}")
        time.sleep(0.5)
    return proc, (port, dashboard), psutil.Process(proc.pid).children(recursive=True)


def gone(process):
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(proc, seconds=30):
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"titk serve still running {seconds} s after the signal:\n{proc.out.read_text()}\n{err}")
    return proc.returncode, proc.out.read_text(), err


def assert_all_stopped(ports, children, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (any(map(listening, ports)) or not all(map(gone, children))):
        time.sleep(0.2)
    assert not any(map(listening, ports)), f"ports still open: {[p for p in ports if listening(p)]}"
    left = [c for c in children if not gone(c)]
    assert not left, f"processes left running: {[c.cmdline() for c in left]}"


@pytest.fixture
def serving(sweep):
    """start_serve, and whatever it started killed afterwards: a failing test must not leave servers behind."""
    started = []

    def start():
        started.append(start_serve(sweep))
        return started[-1]

    yield start
    for proc, _, children in started:
        for process in [*children, proc]:
            if process.poll() is None if isinstance(process, subprocess.Popen) else not gone(process):
                process.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_both_servers_and_their_workers(sweep, serving, sig):
    proc, ports, children = serving()
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children)  # mlflow server's own worker, a grandchild
    proc.send_signal(sig)
    code, out, err = wait_for(proc)
    assert code == 0, err
    assert f"MLflow UI: http://127.0.0.1:{ports[0]}" in out and f"optuna-dashboard: http://127.0.0.1:{ports[1]}" in out
    assert_all_stopped(ports, children)
    assert not any((sweep / "elsewhere").iterdir())  # the servers ran in the work directory, not here


def test_a_server_that_dies_is_reported_with_its_log(sweep, serving):
    proc, ports, children = serving()
    mlflow = next(c for c in psutil.Process(proc.pid).children() if "mlflow" in " ".join(c.cmdline()))
    mlflow.send_signal(signal.SIGKILL)  # its uvicorn worker lives on and keeps the port, unless titk kills the group
    code, out, err = wait_for(proc)
    assert code != 0
    log = sweep / "work" / "serve" / "mlflow.log"
    assert f"MLflow UI exited with status -9 while serving; the last lines of {log}" in " ".join(err.split())
    assert f"Uvicorn running on http://127.0.0.1:{ports[0]}" in err  # a line of the log (which grows while titk stops the rest)
    assert "Traceback" not in err
    assert_all_stopped(ports, children)


def test_a_busy_port_is_named(sweep, run_cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run_cli("serve", sweep / "work", "--port", port, "--dashboard-port", free_ports(1)[0])
    assert_one_line_error(code, err, f"port {port} is in use", "--port")


def test_a_server_that_cannot_start_says_why(sweep, run_cli, monkeypatch, tmp_path):
    """The reason is in the server's log, not a guess about the port."""
    import titk.sweep.serve as serve

    fake = tmp_path / "fake-mlflow"
    fake.write_text("#!/bin/sh\necho starting\necho 'sqlite3.OperationalError: unable to open database file' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(serve, "_executable", lambda name: str(fake) if name == "mlflow" else "/bin/sleep")
    monkeypatch.setattr(serve, "_Server", _sleeping_dashboard(serve._Server))
    port, dashboard = free_ports()
    code, out, err = run_cli("serve", sweep / "work", "--port", port, "--dashboard-port", dashboard)
    assert code == 1
    assert "error: MLflow UI did not start: it exited with status 3" in err
    assert "sqlite3.OperationalError: unable to open database file" in err
    assert "is port" not in err and "Traceback" not in err


def _sleeping_dashboard(server_class):
    """optuna-dashboard replaced by `sleep 60`: a server that never answers and must be stopped too."""
    def make(label, url, probe, log, cmd):
        return server_class(label, url, probe, log, ["/bin/sleep", "60"] if label == "optuna-dashboard" else cmd)
    return make


def test_the_mlflow_ui_shows_the_trials_and_their_metrics(sweep, tmp_path):
    png, dom = tmp_path / "ui.png", tmp_path / "ui.html"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "mlflow-ui-screenshot.py"), "work", "-o", str(png), "--dump-dom", str(dom)],
                          cwd=sweep, env=env(sweep), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    image = Image.open(png).convert("RGB")
    assert image.size == (1600, 1000)
    assert len(image.getcolors(maxcolors=1 << 20)) > 200  # a rendered page, not a blank or an error screen
    text = dom.read_text()
    for name in ("trial 0", "trial 1", "objective", "norms.mean", "search.train.learning_rate"):
        assert name in text, f"{name!r} is not on the rendered page"
