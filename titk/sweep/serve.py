"""`titk serve`: the MLflow UI and optuna-dashboard for a work directory, on loopback.

Both servers run in sessions of their own, so a Ctrl-C in the terminal reaches only titk, which stops
them in order. Whatever stops titk (Ctrl-C, SIGTERM from a service manager, SIGHUP from a closed
terminal) stops each server's whole process group: `mlflow server` runs uvicorn as a child of its own,
which would otherwise outlive it and keep the port.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TitkError
from .storage import JOURNAL, tracking_uri, workdir_stores

START_SECONDS = 120.0  # mlflow server imports for tens of seconds on a busy 2-core machine
STOP_SECONDS = 10.0
TAIL_LINES = 10
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # an http_proxy must not see 127.0.0.1


class ServerFailed(TitkError):
    """A server that did not start or died while serving; `tail` holds the last lines of its log."""

    exit_code = 1

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


@dataclass
class _Server:
    label: str
    url: str
    probe: str
    log: Path
    cmd: list[str]
    proc: subprocess.Popen | None = field(default=None, repr=False)


def stores(workdir: Path) -> tuple[str, str, str]:
    """(study name, Optuna storage, MLflow tracking URI) of a work directory, from any folder: its own files
    wherever it now is, or the database and server it names (checked to answer)."""
    meta, storage_url, tracking = workdir_stores(workdir)
    tracking = tracking_uri(tracking, workdir, storage_url, create=False)  # a tracking server must answer
    return meta["config"]["study"], storage_url or str(workdir / JOURNAL), tracking


def study_view(tracking: str, study: str, base: str) -> str:
    """The MLflow UI's page of the study's experiment, in titk's default view (trials with their scores and
    settings), or the UI's front page when the experiment cannot be found."""
    from mlflow import MlflowClient

    from ..tracking.mlflow_log import VIEW_KEY

    try:
        experiment = MlflowClient(tracking).get_experiment_by_name(study)
    except Exception:  # noqa: BLE001  the link is a convenience; the servers are up either way
        experiment = None
    if experiment is None:
        return base
    # the training UI (MLflow 3 opens on its GenAI pages unless told), in titk's view
    return f"{base.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def _check_port(port: int, option: str) -> None:
    if not 0 < port < 65536:
        raise TitkError(f"{option} {port}: not a port number (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the servers themselves bind: a port left in TIME_WAIT by the last `titk serve` is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TitkError(f"port {port} is in use ({option}); stop what holds it or choose another {option}") from None
            raise TitkError(f"{option} {port}: cannot listen on it ({exc.strerror}); choose another") from None


def _executable(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _tail(log: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


class _StopRequest:
    """SIGTERM, SIGHUP and SIGINT only set a flag that the waiting loops look at: an exception raised
    from a handler could land between starting a server and recording it, and leave it running."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def __bool__(self):
        return self.signal is not None


def _wait_until_up(server: _Server, stop: _StopRequest, seconds: float = START_SECONDS) -> bool:
    """True once the server answers; False when a stop was asked for. A server that exits or never
    answers raises ServerFailed with the end of its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stop:
            return False
        code = server.proc.poll()
        if code is not None:
            raise ServerFailed(f"{server.label} did not start: it exited with status {code}; the last lines of {server.log}:", _tail(server.log))
        try:
            with _LOOPBACK.open(server.probe, timeout=2) as response:
                if response.status < 500:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise ServerFailed(f"{server.label} did not answer at {server.url} within {seconds:.0f} s; the last lines of {server.log}:", _tail(server.log))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # each server leads its own session, so its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(proc: subprocess.Popen) -> bool:
    if proc.poll() is None:
        return True
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every process of each server, SIGKILL to what is left after STOP_SECONDS."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while any(_group_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in procs:
        if _group_alive(proc):
            _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def serve(workdir: str | Path, port: int = 5000, dashboard_port: int = 8080, *, check: bool = False, console=None) -> None:
    """Run both servers until a signal (Ctrl-C, SIGTERM, SIGHUP) asks to stop, or with `check` until both answer.
    A server that fails to start or dies while serving raises ServerFailed; both are stopped either way."""
    workdir = Path(workdir).resolve()
    study, storage, tracking = stores(workdir)
    if port == dashboard_port:
        raise TitkError(f"--port and --dashboard-port are both {port}; give them different ports")
    _check_port(port, "--port")
    _check_port(dashboard_port, "--dashboard-port")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    logs = workdir / "serve"
    logs.mkdir(exist_ok=True)
    mlflow_url, dash_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}"
    servers = [
        _Server("optuna-dashboard", dash_url, dash_url, logs / "optuna-dashboard.log",
                [_executable("optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(dashboard_port), "--quiet"]
                + (["--storage-class", "JournalFileStorage"] if "://" not in storage else [])),
    ]
    if tracking.startswith(("http://", "https://")):  # the study's runs are on a tracking server: its UI is the one to open
        mlflow_url = tracking
    else:
        servers.insert(0, _Server("MLflow UI", mlflow_url, mlflow_url + "/health", logs / "mlflow.log",
                                  [_executable("mlflow"), "server", "--backend-store-uri", tracking, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]))
    procs: list[subprocess.Popen] = []
    with _StopRequest() as stop:
        try:
            for server in servers:
                with open(server.log, "w") as log:
                    # in the work directory, so nothing a server writes lands in the caller's folder
                    server.proc = subprocess.Popen(server.cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
                procs.append(server.proc)
            for server in servers:
                if not _wait_until_up(server, stop):
                    return
            if console:
                console.print(f"MLflow UI: {study_view(tracking, study, mlflow_url)}", highlight=False, soft_wrap=True)
                console.print(f"optuna-dashboard: {dash_url}", highlight=False)
            if check:
                return
            if console:
                console.print("Ctrl-C stops both.", highlight=False)
            while not stop:
                for server in servers:
                    code = server.proc.poll()
                    if code is not None:
                        raise ServerFailed(f"{server.label} exited with status {code} while serving; the last lines of {server.log}:", _tail(server.log))
                time.sleep(0.25)
        except KeyboardInterrupt:  # outside the main thread no handler turns Ctrl-C into a flag
            pass
        finally:
            _stop(procs)
