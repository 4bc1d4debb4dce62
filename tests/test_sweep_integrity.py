"""Sweep integrity: restarts and extra workers never repeat trials, a torn journal recovers, no MLflow run is
left RUNNING, what cannot work is refused before training, a sweep that achieved nothing says so, and a full
disk is one line after which the study resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import assert_one_line_error, write_sweep_config
from mlflow import MlflowClient
from optuna.trial import TrialState

from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep

TITK = [sys.executable, "-m", "titk"]


def _study(workdir: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(JournalFileBackend(str(workdir / "optuna.journal"))))


def _trained(study: optuna.Study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]


def _assert_distinct(study: optuna.Study) -> None:
    settings = [tuple(sorted(t.params.items())) for t in _trained(study)]
    assert len(settings) == len(set(settings)), f"repeated settings: {settings}"


def _runs(workdir: Path):
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("tiny")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("titk.role") == "trial"]


def _no_open_runs(workdir: Path) -> None:
    open_runs = [r.data.tags.get("titk.trial") for r in _runs(workdir) if r.info.status == "RUNNING"]
    assert not open_runs, f"MLflow runs left RUNNING for trials {open_runs}"


def _config(tmp_path, fixtures, **over):
    over.setdefault("enqueue", [])
    over.setdefault("objective__pruner", "none")
    return write_sweep_config(tmp_path, fixtures, **over)


def test_restarts_do_not_replay_earlier_suggestions(tmp_path, fixtures):
    """The same sampler seed in every process replayed trial 0 after a restart; now each start draws its own."""
    # retrain_duplicates: distinct settings must come from the seeds, not from answering replays
    config = load_sweep_config(_config(tmp_path, fixtures, n_trials=2, retrain_duplicates=True))
    work = tmp_path / "work"
    run_sweep(config, workdir=work, show_progress=False)
    run_sweep(config, workdir=work, n_trials=4, show_progress=False)
    study = _study(work)
    assert len(_trained(study)) == 4
    _assert_distinct(study)
    seeds = {t.user_attrs["titk.sampler_seed"] for t in _trained(study)}
    assert config.seed in seeds and len(seeds) == 2  # the creator's seed is the study's; the restart drew another


def test_a_measured_suggestion_is_answered_not_trained_again(tmp_path, fixtures):
    path = _config(tmp_path, fixtures, n_trials=3, space={"embedding.vectors": {"choice": [2]}})
    result = run_sweep(load_sweep_config(path), workdir=tmp_path / "work", show_progress=False)
    study = _study(tmp_path / "work")
    trained = _trained(study)
    copies = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(trained) == 1 and len(copies) == 20  # then the sweep stops: the space is used up
    assert all(t.values == trained[0].values and t.user_attrs["duplicate_of"] == trained[0].number for t in copies)
    assert "space is used up" in result.note
    assert len(_runs(tmp_path / "work")) == 1  # nothing trained twice, nothing logged twice

    again = load_sweep_config(path, ["retrain_duplicates=true", "study=again"])
    run_sweep(again, workdir=tmp_path / "work2", show_progress=False)
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="again", storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "work2" / "optuna.journal"))))
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3 and not any("duplicate_of" in t.user_attrs for t in study.trials)


def test_two_sweeps_at_once_on_a_fresh_work_directory(tmp_path, fixtures):
    """Both start together (the stores are created once, under a lock) and never train the same settings."""
    path = _config(tmp_path, fixtures, n_trials=4, base__train__max_steps=2, objective__eval_every=0)
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([*TITK, "sweep", str(path), "-w", str(work)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    study = _study(work)
    assert len(_trained(study)) >= 4
    _assert_distinct(study)
    workers = {t.user_attrs["titk.pid"] for t in _trained(study)}
    assert len(workers) == 2
    _no_open_runs(work)


def _start_and_wait_for_a_trial(path: Path, work: Path, extra=()) -> tuple[subprocess.Popen, int]:
    # As from a terminal: Ctrl-C interrupts. (A test run started in the background of a script inherits an
    # ignored SIGINT, which Python then never turns into KeyboardInterrupt.)
    proc = subprocess.Popen([*TITK, "sweep", str(path), "-w", str(work), *extra], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (work / "optuna.journal").exists():
            running = [t for t in _study(work).get_trials(deepcopy=False, states=[TrialState.RUNNING]) if t.user_attrs.get("mlflow_run_id")]
            if running and (work / "trials" / f"{running[0].number:04d}").exists():
                time.sleep(1.5)  # well inside the training
                return proc, running[0].number
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"no trial started: {proc.stdout.read()[-2000:]}")


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_a_stopped_worker_leaves_no_run_open_and_its_trial_is_retried(tmp_path, fixtures, how):
    # long enough that the sweep is still training when the poll below sees it, however slow the poll (the
    # tiny model trains 400 steps in a few seconds, and a parallel test process slows the poll)
    path = _config(tmp_path, fixtures, n_trials=2, base__train__max_steps=20000, objective__eval_every=0)
    work = tmp_path / "work"
    proc, number = _start_and_wait_for_a_trial(path, work)
    os.killpg(proc.pid, signal.SIGKILL if how == "kill -9" else signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    if how == "Ctrl-C":
        assert "Traceback" not in output and proc.returncode == 130, output[-3000:]

    result = run_sweep(load_sweep_config(path, ["base.train.max_steps=6"]), workdir=work, show_progress=False)
    study = result.study
    stopped = study.trials[number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] in ("interrupted", "worker died (its process is gone)")
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == number)
    assert retry.params == stopped.params and retry.state == TrialState.COMPLETE
    _no_open_runs(work)
    run = next(r for r in _runs(work) if r.info.run_id == stopped.user_attrs["mlflow_run_id"])
    assert run.info.status in ("FAILED", "KILLED") and run.data.tags.get("titk.reason")
    _assert_distinct(study)


def test_a_second_ctrl_c_during_the_first_ones_cleanup_leaves_nothing_open(tmp_path, fixtures, monkeypatch):
    """The second Ctrl-C arrives while the interrupted trial is closing its MLflow run: the run still ends
    KILLED with its reason, at once, and the trial is retried on the next start."""
    import titk.train.loop as loop
    from titk.tracking.mlflow_log import Tracker

    path = _config(tmp_path, fixtures, n_trials=2)
    work = tmp_path / "work"
    real_train, real_finish = loop.train_together, Tracker.finish

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    def finish_during_a_second_ctrl_c(self, *args, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again
        time.sleep(0.2)
        return real_finish(self, *args, **kw)

    monkeypatch.setattr(loop, "train_together", interrupted)
    monkeypatch.setattr(Tracker, "finish", finish_during_a_second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep_config(path), workdir=work, show_progress=False)
    monkeypatch.setattr(loop, "train_together", real_train)
    monkeypatch.setattr(Tracker, "finish", real_finish)
    _no_open_runs(work)
    stopped = _study(work).trials[0]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "interrupted"
    study = run_sweep(load_sweep_config(path), workdir=work, show_progress=False).study
    assert any(t.user_attrs.get("retry_of") == 0 and t.state == TrialState.COMPLETE for t in study.trials)


def test_a_torn_journal_is_repaired_in_one_line_and_the_study_goes_on(tmp_path, fixtures, run_cli):
    path = _config(tmp_path, fixtures, n_trials=1)
    work = tmp_path / "work"
    code, _, err = run_cli("sweep", path, "-w", work)
    assert code == 0, err
    journal = work / "optuna.journal"
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # a write cut in the middle
    code, out, err = run_cli("sweep", path, "-w", work, "--n-trials", "2")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "torn" in line]
    assert len(notes) == 1 and notes[0].startswith("note: optuna.journal") and "optuna.journal.torn-" in notes[0]
    assert len(list(work.glob("optuna.journal.torn-*"))) == 1
    assert len(_trained(_study(work))) == 2
    code, _, err = run_cli("report", work, "-o", tmp_path / "report.html")
    assert code == 0, err


@pytest.mark.parametrize("case", ["metric", "floor", "choice", "range", "enqueue-value", "enqueue-space"])
def test_what_cannot_work_is_refused_before_a_study_exists(tmp_path, fixtures, run_cli, case):
    over, needle = {
        "metric": ({"objective__metrics": {"identity.simlarity": 1.0}}, "'identity.simlarity' is not a metric titk computes (known: identity.similarity"),
        "floor": ({"objective__floors": {"clip_t2": 0.2}}, "objective.floors: 'clip_t2' is not a metric"),
        "choice": ({"space": {"embedding.vectors": {"choice": [0, 100]}}, "enqueue": []}, "space: embedding.vectors=0"),
        "range": ({"space": {"embedding.vectors": {"low": 1, "high": 100}}, "enqueue": []}, "space: embedding.vectors=100"),
        "enqueue-value": ({"enqueue": [{"train.learning_rate": 0.05, "embedding.vectors": 4}]}, "enqueue: entry 1: embedding.vectors=4 is outside the space"),
        "enqueue-space": ({"enqueue": [{"train.learning_rate": 0.05, "embedding.vectors": 2}, {"train.lr": 1}]}, "enqueue: ['train.lr'] are not in the space"),
    }[case]
    path = write_sweep_config(tmp_path, fixtures, **over)
    code, _, err = run_cli("sweep", path, "-w", tmp_path / "work")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "work" / "optuna.journal").exists()  # no half-created study for the rerun to trip over


def test_a_sweep_that_trained_nothing_exits_non_zero_with_its_reasons(tmp_path, fixtures, run_cli, monkeypatch):
    import titk.train.loop as loop

    real = loop.denoising_losses
    monkeypatch.setattr(loop, "denoising_losses", lambda *a, **k: [loss * float("nan") for loss in real(*a, **k)])
    path = _config(tmp_path, fixtures, n_trials=3)
    code, out, err = run_cli("sweep", path, "-w", tmp_path / "work")
    assert_one_line_error(code, err, "stopped after 5 failed trials in a row", "5 × training stopped: the loss became nan at step 1")
    assert code == 1
    code, _, err = run_cli("report", tmp_path / "work", "-o", tmp_path / "report.html")
    assert code == 0, err
    assert "no trial was trained to the end: 5 failed: 5 × training stopped" in (tmp_path / "report.html").read_text()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); the disk-full test needs one")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount: Path, leave: int) -> Path:
    filler = mount / "filler"
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_is_one_line_and_training_resumes(tmp_path, fixtures, run_cli, small_disk):
    from helpers import make_images

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{source: {fixtures['tiny-sd1'].folder}, dtype: fp32}}\nembedding: {{name: ohwx, vectors: 2}}\n"
        "train: {max_steps: 4, learning_rate: '0.01'}\noutput: {save_every: 2}\n"
    )
    data = make_images(tmp_path / "data", 4)
    filler = _fill(small_disk, 0)
    code, _, err = run_cli("train", recipe, "-d", data, "-o", small_disk / "run")
    assert_one_line_error(code, err, "disk full writing", str(small_disk / "run"), "run the same command again")
    assert code == 4
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    filler.unlink()
    code, _, err = run_cli("train", recipe, "-d", data, "-o", small_disk / "run")
    assert code == 0, err
    assert (small_disk / "run" / "ohwx.pt").is_file()


def test_a_sweep_on_a_full_disk_stops_in_one_line_and_resumes(tmp_path, fixtures, run_cli, small_disk):
    path = _config(tmp_path, fixtures, n_trials=1)
    work = small_disk / "work"
    code, _, err = run_cli("sweep", path, "-w", work)
    assert code == 0, err
    filler = _fill(small_disk, 96 * 1024)  # room for the start, not for a trial's files
    code, _, err = run_cli("sweep", path, "-w", work, "--n-trials", "2")
    assert_one_line_error(code, err, "disk full")
    filler.unlink()
    code, _, err = run_cli("sweep", path, "-w", work, "--n-trials", "2")
    assert code == 0, err
    study = _study(work)
    assert len(_trained(study)) == 2
    _no_open_runs(work)
    for t in study.trials:  # whatever the full disk stopped was retried
        if t.state == TrialState.FAIL:
            assert any(r.user_attrs.get("retry_of") == t.number for r in study.trials), t.user_attrs
