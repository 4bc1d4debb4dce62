"""Dataset composition as a searched variable (subset.compose) and what a study records for personality."""

import html
from pathlib import Path

import pytest
import yaml

from helpers import assert_one_line_error
from titk.analysis import dose_response, load_study
from titk.analysis.html import write_report
from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep
from titk.toyworld.world import clothing_bias, heldout, write_dataset


def _study(tmp_path, **compose) -> str:
    """A toy-world study of 12 images, 6 in tank tops, on subsets of 4 with a searched share of tank tops;
    trials train 4 steps and are scored by personality alone on 2 probe images of 5 steps."""
    write_dataset(tmp_path / "data", heldout(0), 12, seed=1, weights=clothing_bias("tank top", 0.5))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"sampler": "dpm++2m", "steps": 5, "cfg": 5.0, "seeds": [1, 2],
                                     "prompts": [{"kind": "personality", "text": "[name]"}]}))
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "study": "composition",
        "base": {"model": {"source": "toyworld", "dtype": "fp32"}, "embedding": {"name": "ohwx", "vectors": 2, "init_text": "person"},
                 "data": {"path": str(tmp_path / "data"), "template": "titk-subject", "width": 64, "height": 64},
                 "train": {"semantics": "a1111", "batch_size": 2, "max_steps": 4, "learning_rate": "0.01"},
                 "output": {"save_every": 0}},
        "space": {}, "sampler": "random", "n_trials": 4, "seed": 2,  # seed 2 draws 1.0, 0.0, 0.5, 0.5
        "subset": {"compose": {"attribute": "clothing", "label": "tank top", "size": 4, "share": {"choice": [0.0, 0.5, 1.0]}, **compose}},
        "confirm": {"top": 0},
        "objective": {"metrics": {"personality.clothing.entropy": 1.0}, "floors": {}, "pruner": "none", "eval_every": 0},
        "evaluation": {"world": "toyworld", "suite": str(suite), "scorers": ["personality"]},
    }))
    return str(config)


def test_composed_subsets_hold_the_share_drawn_and_the_report_draws_the_dose_response(tmp_path, monkeypatch):
    """Each trial trains on 4 images of which the searched share wear tank tops (as the attribute model reads
    them: the study records every image's labels), its personality's dataset side counts those 4 images,
    and with three shares among the trials the report draws the dose-response."""
    result = run_sweep(load_sweep_config(_study(tmp_path)), workdir=tmp_path / "work", show_progress=False)
    data = load_study(tmp_path / "work")
    labels = dict(zip(data.attributes["file"], data.attributes["clothing"]))
    assert len(labels) == 12 and sum(label == "tank top" for label in labels.values()) == 6
    done = data.finished
    for trial in result.study.trials:
        if trial.number not in set(done["trial"]):
            continue
        share, subset = trial.params["subset_share"], trial.user_attrs["subset"]
        tanks = sum(labels[name] == "tank top" for name in subset)
        assert len(subset) == 4 and tanks == round(4 * share), (share, subset)
        assert trial.user_attrs["personality"]["clothing"]["dataset"][0] == tanks and sum(trial.user_attrs["personality"]["clothing"]["dataset"]) == 4
    curve = dose_response(done, "clothing", "tank top")
    assert set(curve["dataset"]) == {0.0, 0.5, 1.0}, curve  # the study's seed draws all three shares
    assert curve.attrs["trials"] == len(done) and curve.attrs["rho"] == curve.attrs["rho"]
    page = html.unescape(write_report(data, tmp_path / "report.html").read_text())
    assert "dose-response clothing" in page and "in 3 different shares, the TI's share follows the dataset's with Spearman" in page
    # the sweep-overview notebook draws the histograms (dataset, untrained, TI) and the dose-response too
    cells = _run_notebook("sweep-overview", tmp_path / "work", monkeypatch)
    drawn = {marker: sum("image/png" in o.get("data", {}) for c in cells if marker in c.source for o in c.outputs)
             for marker in ("plots.personality(", "plots.dose_response(")}
    assert drawn["plots.personality("] == 4 and drawn["plots.dose_response("] >= 1, drawn  # the toy world's 4 label sets; clothing's dose at least
    shift = next(c for c in cells if "net_shift_low" in c.source).outputs[0]["data"]["text/plain"]
    assert "metric.personality.clothing.net_shift_low" in shift


def _run_notebook(name: str, workdir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TITK_WORKDIR", str(workdir))
    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir.parent)}}).execute()
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("case, needle", [
    ({"label": "kilt"}, "subset.compose.label: 'kilt' is not a clothing label"),
    ({"attribute": "hats"}, "subset.compose.attribute: 'hats' is not a label set"),
    ({"size": 8}, "a share of 0 of 8 images needs 0 with clothing 'tank top' and 8 without, but the attribute model finds 6"),
])
def test_a_composition_that_cannot_be_drawn_fails_in_one_line(tmp_path, run_cli, case, needle):
    code, _, err = run_cli("sweep", _study(tmp_path, **case), "-w", tmp_path / "work")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "work").exists()  # refused before a study exists
