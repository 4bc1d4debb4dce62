"""titk sweep on a tiny fixture: trials, pruning, failures, resume, MLflow contents, subsets, bad inputs."""

import json

import optuna
import pandas as pd
import pytest
from helpers import assert_one_line_error, write_sweep_config as write_config
from mlflow import MlflowClient
from optuna.trial import TrialState

from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep


def runs_of(workdir, study="tiny"):
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id])
    return client, [r for r in runs if r.data.tags.get("titk.role") == "trial"], [r for r in runs if r.data.tags.get("titk.role") == "study"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fixtures):
    tmp = tmp_path_factory.mktemp("sweep")
    # 7 steps, evaluated every 2: at 2 and 4 on the intermediate suite; not at 6, one step before the final one
    config = load_sweep_config(write_config(tmp, fixtures, base__train__max_steps=7))
    result = run_sweep(config, workdir=tmp / "work", show_progress=False)
    return tmp, result


def test_sweep_runs_trials_with_pruning(finished):
    _, result = finished
    states = {t.number: t.state for t in result.study.trials}
    assert states[0] == states[1] == TrialState.COMPLETE
    assert states[2] == TrialState.PRUNED  # a learning rate of 1e-5 barely moves the vectors: below the median
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == 4
    assert result.study.trials[0].params == {"train.learning_rate": 0.05, "embedding.vectors": 2}  # the enqueued recipe first
    assert list(result.study.trials[1].intermediate_values) == [2, 4]  # trial 0, the baseline, is never pruned: it reports none


@pytest.mark.parametrize("rule", ["halving", "hyperband"])
def test_successive_halving_and_hyperband_prune_on_the_intermediate_scores(tmp_path, fixtures, rule):
    """The same study as above under successive halving (first rung at the first intermediate evaluation,
    step 2) and Hyperband: the learning rate of 1e-5 is cut at a rung, recorded as pruned by that rule."""
    path = write_config(tmp_path, fixtures, base__train__max_steps=7, n_trials=3, objective__pruner=rule, objective__reduction_factor=2)
    config = load_sweep_config(path)
    result = run_sweep(config, workdir=tmp_path / "work", show_progress=False)
    pruner = result.study.pruner
    assert type(pruner).__name__ == {"halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner"}[rule]
    states = {t.number: t.state for t in result.study.trials}
    assert states[0] == states[1] == TrialState.COMPLETE
    if rule == "halving":  # at the first rung trial 1 alone; at step 2 trial 2 is the worse of two: cut
        assert states[2] == TrialState.PRUNED and result.study.trials[2].user_attrs["titk.pruned"]["rule"] == "halving"
    assert all(t.user_attrs["titk.pruned"]["rule"] == rule for t in result.study.trials if t.state == TrialState.PRUNED)


def test_mlflow_holds_everything_to_compare(finished):
    tmp, result = finished
    client, trials, studies = runs_of(tmp / "work")
    assert len(studies) == 1 and len(trials) == 4
    parent = studies[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trials)
    by_trial = {int(r.data.tags["titk.trial"]): r for r in trials}
    done, pruned = by_trial[0], by_trial[2]
    assert (done.info.status, done.data.tags["titk.state"]) == ("FINISHED", "COMPLETE")
    # stopped early by design, not a failure: MLflow's KILLED would list it with the crashed ones
    assert (pruned.info.status, pruned.data.tags["titk.state"], pruned.info.run_name) == ("FINISHED", "PRUNED", "trial 2 (pruned)")
    params = done.data.params
    assert params["search.train.learning_rate"] == "0.05" and params["effective.batch_size"] == "2"
    assert params["model.dtype"] == "fp32" and params["model.resolved_dtype"] == "float32" and params["model.source"].endswith("tiny-sd1")
    assert params["evaluation.scorers"] == '["norms"]' and params["evaluation.suite"].endswith("suite.yaml")
    assert {"effective.steps", "effective.epochs", "effective.image_views", "effective.grad_accum", "train.semantics"} <= set(params)
    assert [m.step for m in client.get_metric_history(done.info.run_id, "intermediate/norms.mean")] == [2, 4] * 3  # the baseline's 3 seeds
    assert [m.step for m in client.get_metric_history(done.info.run_id, "norms.mean")] == [7] * 3  # the final suite's, apart
    assert {m.step for m in client.get_metric_history(done.info.run_id, "train.loss")} == {2, 4, 7}
    # the deterministic validation loss and the objective on the part of the final suite, beside the intermediate scores
    for name in ("validation.loss", "intermediate/objective"):
        assert {m.step for m in client.get_metric_history(done.info.run_id, name)} == {2, 4}
    # a pruned trial is no result: nothing final in MLflow (no objective, no final scores), only what came before
    assert all(name.startswith(("intermediate/", "train.", "validation.")) for name in pruned.data.metrics), sorted(pruned.data.metrics)
    assert result.study.trials[2].user_attrs["titk.pruned"] == {"rule": "median", "step": 2, "value": pytest.approx(result.study.trials[2].intermediate_values[2])}
    metric_names = set(done.data.metrics) | set(pruned.data.metrics)
    # MLflow's UI makes a chart section of whatever precedes a "/": titk's only section is the intermediate one
    assert {name.split("/")[0] for name in metric_names if "/" in name} == {"intermediate"}
    artifacts = {a.path for a in client.list_artifacts(done.info.run_id)}
    assert {"samples-seed-0.png", "images", "scores", "scorecards", "embeddings", "train", "dataset"} <= artifacts  # the final grids on top (one per seed of the baseline)
    assert {a.path for a in client.list_artifacts(done.info.run_id, "embeddings")} == {"embeddings/ohwx.pt", "embeddings/ohwx.safetensors"}
    dataset = done.inputs.dataset_inputs[0].dataset
    assert dataset.name == "tiny-trial-0" and {"file", "sha256"} <= {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    table = json.loads(open(client.download_artifacts(done.info.run_id, "dataset/manifest.json", str(tmp))).read())
    manifest = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(manifest) == 6 and manifest["sha256"].str.len().eq(64).all() and manifest["included"].all()
    assert result.study.trials[0].user_attrs["mlflow_run_id"] == done.info.run_id
    assert client.get_run(parent).data.metrics["trials.complete"] >= 2


def test_a_pruned_trial_shows_no_final_score_and_the_pruning_signal_is_measured(finished, capsys):
    from optuna.distributions import FloatDistribution

    from titk.cli.studies import _pruning_signal, _trial_line
    from titk.sweep.trials import trials_frame

    _, result = finished
    table = trials_frame(result.study).set_index("trial")
    pruned = table["state"] == "PRUNED"  # Optuna's own value for a pruned trial is an intermediate one
    assert pruned.loc[2] and table.loc[pruned, "value"].isna().all() and table.loc[~pruned, "value"].notna().all()
    _trial_line(result.study, result.study.trials[2])
    line = capsys.readouterr().out
    assert "trial 2 pruned  by the median rule at step 2 (intermediate objective" in line and "no final score" in line
    # two complete trials reported intermediate values (the baseline never does): too few for a rank correlation
    assert "not measured" in _pruning_signal(result.study, trials_frame(result.study), "median")
    assert _pruning_signal(result.study, trials_frame(result.study), "wilcoxon") is None

    study = optuna.create_study(direction="maximize")
    for number, (early, final) in enumerate([(0.1, 0.3), (0.2, 0.5), (0.4, 0.4), (0.3, 0.6)]):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)}, value=final,
                                                  intermediate_values={50: early, 100: final - 0.01 * number}))
    signal = _pruning_signal(study, trials_frame(study), "median")
    assert signal.startswith("pruning signal: intermediate/objective at step 100: ρ = +1.00 (") and "4 trials" in signal


def test_failed_trial_is_recorded_and_the_study_goes_on(tmp_path, fixtures, monkeypatch):
    import titk.train.loop as loop

    real = loop.denoising_losses

    def nan_for_three_vectors(bundle, parts):
        losses = real(bundle, parts)
        return [loss * float("nan") for loss in losses] if bundle.encoders[0].spliced.extra.shape[0] == 3 else losses

    monkeypatch.setattr(loop, "denoising_losses", nan_for_three_vectors)
    path = write_config(tmp_path, fixtures, n_trials=2, enqueue=[{"train.learning_rate": 0.05, "embedding.vectors": 3}, {"train.learning_rate": 0.05, "embedding.vectors": 2}])
    result = run_sweep(load_sweep_config(path), workdir=tmp_path / "work", show_progress=False)
    first = result.study.trials[0]
    assert first.state == TrialState.FAIL and "loss became nan at step 1" in first.user_attrs["fail_reason"]
    assert result.study.trials[1].state == TrialState.COMPLETE
    _, trials, _ = runs_of(tmp_path / "work")
    failed = next(r for r in trials if r.data.tags["titk.trial"] == "0")
    assert failed.info.status == "FAILED" and "nan" in failed.data.tags["titk.reason"]


def test_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path, fixtures, monkeypatch):
    import titk.train.loop as loop

    path = write_config(tmp_path, fixtures, objective__pruner="none")
    config = load_sweep_config(path)
    run_sweep(config, workdir=tmp_path / "work", n_trials=2, show_progress=False)
    real = loop.train_together

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_together", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, workdir=tmp_path / "work", n_trials=3, show_progress=False)
    monkeypatch.setattr(loop, "train_together", real)
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "work" / "optuna.journal"))))
    assert study.trials[2].state == TrialState.FAIL and study.trials[2].user_attrs["fail_reason"] == "interrupted"
    result = run_sweep(config, workdir=tmp_path / "work", n_trials=3, show_progress=False)
    trials = result.study.trials
    retry = trials[3]
    assert retry.user_attrs["retry_of"] == 2 and retry.params == trials[2].params and retry.state == TrialState.COMPLETE
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.COMPLETE] and len(trials) == 4
    _, runs, _ = runs_of(tmp_path / "work")
    numbers = sorted(int(r.data.tags["titk.trial"]) for r in runs)
    assert numbers == [0, 1, 2, 3]  # finished trials were not run again
    interrupted_run = next(r for r in runs if r.data.tags["titk.trial"] == "2")
    assert interrupted_run.info.status == "KILLED" and "interrupted" in interrupted_run.data.tags["titk.reason"]
    client, _, (parent,) = runs_of(tmp_path / "work")
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "trials.json", str(tmp_path))).read())
    assert sorted(int(row[table["columns"].index("trial")]) for row in table["data"]) == [0, 1, 2, 3]  # replaced, not appended


def test_dataset_subsets(tmp_path, fixtures):
    path = write_config(tmp_path, fixtures, n_trials=2, enqueue=[], space={}, subset={"size": 4})
    result = run_sweep(load_sweep_config(path), workdir=tmp_path / "work", show_progress=False)
    subsets = [t.user_attrs["subset"] for t in result.study.trials]
    assert all(len(s) == 4 for s in subsets) and subsets[0] != subsets[1]
    _, runs, _ = runs_of(tmp_path / "work")
    source = runs[0].inputs.dataset_inputs[0].dataset
    assert source.name.startswith("tiny-trial-")
    # each subset is its own MLflow dataset: two subsets, two digests
    assert len({r.inputs.dataset_inputs[0].dataset.digest for r in runs}) == 2
    flags = write_config(tmp_path / "f", fixtures, n_trials=1, enqueue=[], space={}, subset={"include_flags": True, "min_images": 2})
    result = run_sweep(load_sweep_config(flags), workdir=tmp_path / "f" / "work", show_progress=False)
    trial = result.study.trials[0]
    included = [k for k, v in trial.params.items() if k.startswith("include:") and v]
    assert len([k for k in trial.params if k.startswith("include:")]) == 6 and trial.user_attrs["subset"] == [k.split(":", 1)[1] for k in included]


def test_two_objectives_give_a_pareto_front(tmp_path, fixtures):
    path = write_config(tmp_path, fixtures, n_trials=2, objective__pareto=["norms.mean", "norms.max"])
    result = run_sweep(load_sweep_config(path), workdir=tmp_path / "work", show_progress=False)
    done = result.study.get_trials(states=[TrialState.COMPLETE])
    assert len(result.study.directions) == 2 and len(done) == 2 and all(len(t.values) == 2 for t in done)
    assert result.study.best_trials


def test_wilcoxon_pruner_reports_each_evaluation_image(tmp_path, fixtures):
    path = write_config(tmp_path, fixtures, n_trials=2, objective__pruner="wilcoxon", objective__metrics={"clip_t": 1.0},
                        evaluation__scorers=["clip"], evaluation__clip={"pretrained": None})
    result = run_sweep(load_sweep_config(path), workdir=tmp_path / "work", show_progress=False)
    baseline, second = result.study.trials[:2]
    assert baseline.user_attrs["titk.baseline"] and not baseline.intermediate_values  # the baseline is never pruned
    assert second.state in (TrialState.COMPLETE, TrialState.PRUNED) and sorted(second.intermediate_values)[:2] == [0, 1]  # one per (prompt, seed)


@pytest.mark.parametrize("case", ["unknown", "empty", "subset", "storage", "tracking", "fixed", "metric", "probes"])
def test_bad_sweeps_fail_in_one_line_before_training(tmp_path, fixtures, run_cli, case):
    over = {
        "unknown": {"space": {"train.lr": {"low": 0.001, "high": 0.1}}},
        "empty": {"space": {"train.learning_rate": {"low": 0.1, "high": 0.001}}},
        "subset": {"subset": {"size": 40}},
        "fixed": {"space": {"model.dtype": {"choice": ["fp32", "bf16"]}}},
        "metric": {"objective__metrics": {"identity.similarity": 1.0}},
        "probes": {"evaluation__personality_suite": "nope"},
    }.get(case, {})
    if case in ("unknown", "empty", "subset", "fixed"):
        over["enqueue"] = []
    path = write_config(tmp_path, fixtures, **over)
    args = ["sweep", path, "-w", tmp_path / "work"]
    if case == "storage":
        args += ["--storage", "postgresql://nobody@127.0.0.1:1/optuna"]
    if case == "tracking":
        args += ["--tracking-uri", "http://127.0.0.1:1"]
    needle = {"unknown": "train.lr", "empty": "empty range", "subset": "only 6", "storage": "cannot reach the database",
              "tracking": "no MLflow server", "fixed": "fixed for a study", "metric": "needs the identity scorer",
              "probes": "'nope': not a file, nor experiments/prompts/nope.yaml"}[case]
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "work" / "trials").exists()
    if case == "probes":  # refused before a study exists
        assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("name", ["person-settings", "person-dataset", "person-pareto"])
def test_shipped_sweep_configs_are_valid(name, tmp_path):
    from pathlib import Path

    from titk.evaluate.suite import load_suite
    from titk.sweep.runner import check_objective
    from titk.sweep.space import check_space, recipe_params

    folder = Path(__file__).resolve().parents[1] / "experiments" / "sweeps"
    config = load_sweep_config(folder / f"{name}.yaml")
    load_suite(config.evaluation.suite)  # the suites it names are shipped
    if config.evaluation.personality_suite:
        load_suite(config.evaluation.personality_suite)
    check_space(config, 15)
    check_objective(config)
    for entry in config.enqueue:
        params = recipe_params(entry, config, folder)
        assert params["train.batch_size"] == 3 and params["train.grad_accum"] == 15
