"""A PNG of the MLflow UI showing a work directory's study: its trials with their metrics.

    .venv/bin/python scripts/mlflow-ui-screenshot.py work/demo -o docs/images/mlflow-ui.png
    .venv/bin/python scripts/mlflow-ui-screenshot.py work/demo --url http://127.0.0.1:5000   # a UI already running
    .venv/bin/python scripts/mlflow-ui-screenshot.py work/demo --dump-dom page.html          # and the rendered DOM

Without --url it starts `titk serve` on free ports and stops it with SIGTERM at the end. Chromium runs
headless (/usr/bin/chromium, or --chromium) with a virtual-time budget, so the React app has rendered its
runs table before the picture is taken. --dump-dom writes the DOM Chromium rendered with the same flags:
what the picture shows, as text a test can search.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trial_names(workdir: Path) -> tuple[str, str, list[str]]:
    """The study's name, its tracking URI and its trial runs' names."""
    from mlflow import MlflowClient

    from titk.errors import TitkError
    from titk.sweep.serve import stores
    try:
        study, _, uri = stores(workdir)
    except TitkError as exc:
        fail(str(exc))
    found = MlflowClient(uri).get_experiment_by_name(study)
    if found is None:
        fail(f"{workdir}: no MLflow experiment named {study!r}; has the sweep run?")
    runs = MlflowClient(uri).search_runs([found.experiment_id], "tags.`titk.role` = 'trial'", max_results=1000)
    return study, uri, [run.info.run_name for run in runs]


def answers(url: str) -> bool:
    try:
        with LOOPBACK.open(url, timeout=2) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError):
        return False


def start_serve(workdir: Path, log: Path, seconds: float = 180.0) -> tuple[subprocess.Popen, str]:
    port, dashboard_port = free_port(), free_port()
    while dashboard_port == port:
        dashboard_port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "titk"), "serve", str(workdir), "--port", str(port), "--dashboard-port", str(dashboard_port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    while not answers(url + "/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_serve(proc)
            fail(f"titk serve did not start the MLflow UI:\n{log.read_text()}")
        time.sleep(0.5)
    return proc, url


def stop_serve(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # titk serve stops both servers and their workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


class Chromium:
    """Headless Chromium driven over its DevTools pipe (fds 3 and 4, NUL-separated JSON): the React app
    renders after the load event, so the picture is taken once a trial shows, and a picture and a DOM taken
    from one page load show the same thing."""

    def __init__(self, binary: str, profile: Path, size: str):
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={size}", "--remote-debugging-pipe", "about:blank"]
        # the shell puts the pipe ends where Chromium looks for them, 3 and 4
        self.proc = subprocess.Popen(["/bin/sh", "-c", f'exec "$@" 3<&{to_chrome} 4>&{from_chrome}', "sh", *cmd],
                                     pass_fds=(to_chrome, from_chrome), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id = b"", 0
        self.session = None
        try:
            width, height = (int(v) for v in size.split(","))
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, page=True)
        except BaseException:
            self.close()
            raise

    def send(self, method: str, params: dict | None = None, page: bool = False) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}, **({"sessionId": self.session} if page else {})}
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    fail(f"chromium closed its DevTools pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # everything else is an event, of no interest here
                if "error" in reply:
                    fail(f"chromium refused {method}: {reply['error'].get('message')}")
                return reply["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, page=True)["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, page=True)
        deadline = time.monotonic() + 60
        while self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                fail(f"{url} did not load within 60 s")
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close")
            except (SystemExit, OSError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._out)
        os.close(self._in)


# MLflow's assistant panel would take a third of the picture; the runs table's columns are titk's own view
QUIET = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


def shoot(args, url: str, workdir: Path, profile: Path) -> str:
    """The page `titk serve` links to (the study's runs in titk's default view), as a user's browser shows it."""
    from titk.sweep.serve import study_view

    study, uri, names = trial_names(workdir)
    if not names:
        fail(f"{workdir}: no trial runs in MLflow yet")
    page = study_view(uri, study, url)
    browser = Chromium(args.chromium, profile, args.window_size)
    try:
        browser.open(url.rstrip("/") + "/")  # localStorage belongs to the origin: set it from one of its pages
        browser.evaluate(";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in QUIET.items()))
        browser.open("about:blank")
        browser.open(page)
        # the React app fetches the runs after the load event: wait until the table shows a trial, then a
        # moment for the layout to settle
        wanted = f"{json.dumps(names)}.some(n => document.body.innerText.includes(n))"
        deadline = time.monotonic() + args.wait
        shown = browser.evaluate(wanted)
        while not shown and time.monotonic() < deadline:
            time.sleep(0.5)
            shown = browser.evaluate(wanted)
        time.sleep(2)
        png = browser.send("Page.captureScreenshot", {"format": "png"}, page=True)["data"]
        dom = browser.evaluate("document.documentElement.outerHTML")
    finally:
        browser.close()
    output = args.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(base64.b64decode(png))
    if args.dump_dom:
        args.dump_dom.parent.mkdir(parents=True, exist_ok=True)
        args.dump_dom.write_text(dom)
    if not shown:  # the picture is written all the same: it shows what the page showed instead
        fail(f"{page}: the runs table showed no trial within {args.wait:.0f} s; see {args.output}")
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="a sweep's work directory")
    parser.add_argument("-o", "--output", type=Path, default=Path("mlflow-ui.png"), help="the PNG to write")
    parser.add_argument("--url", help="an MLflow UI already serving this work directory (default: start titk serve)")
    parser.add_argument("--dump-dom", type=Path, help="also write the DOM the picture was taken of")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary")
    parser.add_argument("--wait", type=float, default=90, help="seconds to wait for the runs table")
    parser.add_argument("--window-size", default="1600,1000", help="width,height of the picture")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if not Path(args.chromium).is_file():
        fail(f"--chromium {args.chromium}: no such file; install chromium or name its binary")
    with tempfile.TemporaryDirectory(prefix="titk-shot-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        proc, url = (None, args.url) if args.url else start_serve(workdir, tmp / "serve.log")
        try:
            page = shoot(args, url, workdir, tmp / "profile")
        finally:
            if proc is not None:
                stop_serve(proc)
    print(f"{args.output}  ({page})")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
