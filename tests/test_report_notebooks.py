"""`titk report` rendered in headless Chromium, and the notebooks run top to bottom, on a study made here."""

import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
from helpers import write_sweep_config
from PIL import Image

from titk.analysis import load_study
from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep

NOTEBOOKS = Path(__file__).resolve().parents[1] / "experiments" / "notebooks"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, fixtures):
    tmp = tmp_path_factory.mktemp("study")
    path = write_sweep_config(
        tmp, fixtures, n_trials=5, repeats=2, enqueue=[], subset={"size": 4},
        objective={"metrics": {"norms.mean": 1.0}, "floors": {}, "pruner": "none", "eval_every": 2},
    )
    run_sweep(load_sweep_config(path), workdir=tmp / "work", show_progress=False)
    return tmp / "work"


def test_load_study_gives_one_row_per_trial(study_dir):
    data = load_study(study_dir)
    assert len(data.finished) == 5 and data.objectives == ["value"]
    assert data.finished["subset"].map(len).eq(4).all() and data.finished["values_per_seed"].map(len).eq(data.finished["baseline"].map({True: 3, False: 2})).all()  # the baseline: 3 seeds
    assert len(data.images) == 6 and "param.train.learning_rate" in data.trials
    curves = data.curves(("intermediate/norms.mean", "norms.mean", "train.loss"))
    assert set(curves["metric"]) == {"intermediate/norms.mean", "norms.mean", "train.loss"}
    assert (curves[curves["metric"] == "intermediate/norms.mean"].groupby("trial")["step"].nunique() >= 2).all()


def test_report_says_which_section_it_is_on(study_dir):
    from titk.analysis.html import SECTIONS, build_report

    seen = []
    build_report(load_study(study_dir), on_progress=seen.append)
    assert seen == list(SECTIONS)


def test_report_renders_in_headless_chromium(study_dir, tmp_path, run_cli):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    report = tmp_path / "report.html"
    code, out, err = run_cli("report", study_dir, "-o", report)
    assert code == 0, err
    text = report.read_text()
    assert "<link" not in text and 'src="http' not in text  # self-contained: opens offline
    for heading in ("Decision", "Progress", "Best trials", "Which settings matter", "Learning curves", "Do intermediate scores predict",
                    "Which images help", "Seed variance"):
        assert f"<h2>{heading}" in text, heading
    assert text.index("Unconfirmed: ") < text.index("<h2>Progress</h2>") and f"titk confirm {study_dir}" in text
    assert "(95% CI, 2 seeds)" in text and "Only 5 trials" in text  # every trial ran 2 seeds; importance from 5 trials
    profile = tmp_path / "profile"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert 'data-plots="' in dom.stdout, dom.stderr[-2000:]
    plots = int(dom.stdout.split('data-plots="')[1].split('"')[0])
    loaded = int(dom.stdout.split('data-plots-loaded="')[1].split('"')[0])
    assert plots >= 5 and loaded == plots  # every embedded figure decoded in the browser
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # figures, not a blank page


@pytest.mark.parametrize("name", ["sweep-overview", "dataset-personality", "seed-variance"])
def test_notebooks_run_top_to_bottom(study_dir, name, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("TITK_WORKDIR", str(study_dir))
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(study_dir.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # it drew something
