"""`titk serve`: the MLflow UI and optuna-dashboard for a work directory, on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import TitkError
from .storage import JOURNAL, MLFLOW_DB


def _wait(url: str, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def _executable(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def serve(workdir: str | Path, port: int = 5000, dashboard_port: int = 8080, *, check: bool = False, console=None) -> None:
    workdir = Path(workdir).resolve()
    db = workdir / MLFLOW_DB
    meta = workdir / "sweep.json"
    if not db.is_file() or not meta.is_file():
        raise TitkError(f"{workdir}: not a sweep work directory (no {MLFLOW_DB} or sweep.json); run `titk sweep` first")
    storage = json.loads(meta.read_text()).get("storage", str(workdir / JOURNAL))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_cmd = [_executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    dash_cmd = [_executable("optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(dashboard_port), "--quiet"]
    if storage.endswith(JOURNAL):
        dash_cmd += ["--storage-class", "JournalFileStorage"]
    logs = workdir / "serve"
    logs.mkdir(exist_ok=True)
    procs = []
    try:
        for cmd, name in ((mlflow_cmd, "mlflow"), (dash_cmd, "optuna-dashboard")):
            procs.append(subprocess.Popen(cmd, env=env, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        urls = {"MLflow UI": f"http://127.0.0.1:{port}", "optuna-dashboard": f"http://127.0.0.1:{dashboard_port}"}
        for (label, url), proc in zip(urls.items(), procs):
            probe = url + "/health" if label == "MLflow UI" else url
            if not _wait(probe):
                raise TitkError(f"{label} did not start (see {logs}); is port {url.rsplit(':', 1)[1]} free?")
            if console:
                console.print(f"{label}: {url}", highlight=False)
        if check:
            return
        if console:
            console.print("Ctrl-C stops both.")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
