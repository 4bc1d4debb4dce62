"""The README's main job: `titk demo`, a sweep in the toy world with embedded storage, then confirmation."""

import html
import json

import pytest

from titk.analysis import load_study


@pytest.mark.slow
def test_demo_runs_and_says_how_to_look_at_it(tmp_path, run_cli):
    """The README's main job, made smaller: the same command and config, two trials (the baseline on its three
    seeds and one other) of 20 or 30 steps instead of 100 to 200, no intermediate evaluations, scored on
    toy-quick (4 of the toy suite's 24 images), and confirmed on two fresh seeds instead of three."""
    workdir = tmp_path / "demo"
    shorter = ["--set", "space.train.max_steps.low=20", "--set", "space.train.max_steps.high=30", "--set", "space.train.max_steps.step=10",
               "--set", "enqueue=[{train.learning_rate: 0.05, embedding.vectors: 4, train.max_steps: 20}]"]
    code, out, err = run_cli("demo", "-w", workdir, "--set", "n_trials=2", "--set", "confirm.seeds=2", *shorter,
                             "--set", "evaluation.suite=toy-quick", "--set", "objective.eval_every=0")
    assert code == 0, err
    assert "seed noise: the baseline's objective" in out and "CI, 3 seeds)" in out
    assert "decision:" in out and (workdir / "confirmation.json").is_file()
    assert "confirming the baseline (lr 0.05, 4 vectors, 20 steps), seed 1000" in out and "confirming trial 1 (lr " in out
    assert len(list((workdir / "data").glob("*.png"))) == 15
    assert "study demo" in out and f"titk serve {workdir}" in out and f"titk report {workdir}" in out and "notebooks" in out
    data = load_study(workdir)
    assert len(data.finished) + (data.trials["state"] == "PRUNED").sum() == 2
    assert data.finished["personality"].map(lambda h: isinstance(h, dict) and "clothing" in h).all()
    # personality is measured against the untrained start too: toy-quick's personality probe at its 2 seeds
    assert data.finished["personality"].map(lambda h: sum(h["clothing"]["untrained"]) == 2).all()
    assert data.finished["metric.personality.clothing.net_shift"].notna().all()
    assert data.finished["metric.personality.clothing.net_shift_low"].notna().all()
    # the dataset side is each trial's own 10 images, and the study records every image's labels
    assert data.finished["personality"].map(lambda h: sum(h["clothing"]["dataset"]) == 10).all()
    assert len(data.attributes) == 12 and {"file", "clothing", "clothing_p", "framing"} <= set(data.attributes)

    # the report opens with the same decision, intervalled, before anything else
    code, _, err = run_cli("report", workdir, "-o", tmp_path / "report.html")
    assert code == 0, err
    page = html.unescape((tmp_path / "report.html").read_text())
    sentence = json.loads((workdir / "confirmation.json").read_text())["sentence"]
    assert "CI" in sentence and "2 seeds" in sentence
    assert "clothing, tank top: dataset " in page and ", untrained " in page and "net of the untrained start it moved " in page
    body = page[page.index("<body"):]
    assert body.index(sentence) < body.index("<section", body.index('<section id="decision">') + 1)
