"""Running a study: create or continue it, run trials one after another on one loaded model, summarise.

`titk sweep` creates the study if needed (with its MLflow experiment and parent run and the enqueued
recipes) and runs trials; `titk worker` joins a study that exists. The study counts complete and pruned
trials towards `n_trials`, so a resumed sweep never repeats a finished trial, and failed ones are retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..config import SweepConfig
from ..errors import TitkError
from ..evaluate.registry import HEADLINES, check_metric, lookup, per_image_column
from ..files import atomic_path
from .holdout import STUDY_ATTR as HELDOUT_ATTR
from .holdout import hold_out
from .packing import optimize_packed
from .pruning import Pruning
from .scoring import objective_names
from .space import baseline_params, check_composition, check_space, check_values, recipe_params
from .storage import JOURNAL, artifact_location, optuna_storage, pid_alive, storage_label, stores_record, tracking_uri
from .trial import RETRY_REASONS, TrialFailed, TrialObjective
from .trials import ATTRIBUTES_ATTR, best_trials, failure_summary, measured, trials_frame

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SweepResult:
    study: optuna.Study
    workdir: Path
    tracking_uri: str
    storage: str
    table: pd.DataFrame
    note: str | None = None  # why the sweep stopped early, when it did without failing
    confirmation: dict | None = None  # the confirmation record (sweep.confirm), when one ran


class SweepFailed(TitkError):
    """A sweep that ended without a result worth having: no trial trained to the end, or failures in a row."""

    exit_code = 1


def _sampler(config: SweepConfig, seed: int):
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    # Trials asked for together (sweep.pack) are sampled as if the running ones had the worst value so far.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=config.pack > 1)


def sampler_seed(config: SweepConfig, created: bool) -> int:
    """The study's seed for the worker that creates it; every other worker and every restart draws its own,
    so that none replays the suggestions another already made. Each trial records the seed it came from."""
    if created:
        return config.seed
    token = f"{config.seed}:{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big")


def check_objective(config: SweepConfig) -> None:
    """Every objective, Pareto and floor metric is one titk computes with the scorers the study runs."""
    o = config.objective
    if o.pareto is not None and len(o.pareto) != 2:
        raise TitkError("objective.pareto: give exactly two metrics")
    for name in o.pareto or o.metrics:
        check_metric(name, config.evaluation.scorers, "objective")
    for name in o.floors:
        check_metric(name, config.evaluation.scorers, "objective.floors")
    if Pruning(o).on_final_images:
        for name in o.metrics:
            per_image_column(name)


def open_study(config: SweepConfig, storage, create: bool, enqueued: list[dict]) -> tuple[optuna.Study, bool, int]:
    """The study (created with its enqueued trials if asked and absent), whether it was created, and the seed
    of this worker's sampler."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    exists = config.study in names
    if not exists and not create:
        raise TitkError(f"study {config.study!r} does not exist in this storage; create it first with `titk sweep CONFIG --storage ... --create-only`")
    directions = ["maximize", "maximize"] if config.objective.pareto else ["maximize"]
    pruner = Pruning(config.objective).optuna_pruner()
    seed = sampler_seed(config, created=not exists)
    if exists:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=_sampler(config, seed), pruner=pruner)
        if len(study.directions) != len(directions):
            raise TitkError(f"study {config.study!r} exists with {len(study.directions)} objective(s); this config has {len(directions)}")
        return study, False, seed
    study = optuna.create_study(study_name=config.study, storage=storage, directions=directions, sampler=_sampler(config, seed), pruner=pruner, load_if_exists=True)
    for number, (entry, params) in enumerate(zip(config.enqueue, enqueued)):
        # The first enqueued entry is the baseline: it runs several seeds, and confirmation compares with it.
        attrs = {"enqueued": entry if isinstance(entry, str) else "params", **({"titk.baseline": True} if number == 0 else {})}
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    if not enqueued and (params := baseline_params(config)) is not None:
        study.enqueue_trial(params, user_attrs={"enqueued": "base settings", "titk.baseline": True}, skip_if_exists=True)
    study.set_user_attr("titk.config", config.model_dump(mode="json"))
    study.set_metric_names(objective_names(config))  # optuna-dashboard's axis labels, not "Objective 0"
    return study, True, seed


def default_columns(config: SweepConfig) -> list[tuple[str, str]]:
    """The MLflow runs table's columns: the objective, the metrics it and its floors are made of, the
    headline metrics of the scorers run, the searched settings."""
    o = config.objective
    objectives = ["objective_0", "objective_1"] if o.pareto else ["objective"]
    parts = [*(o.pareto or o.metrics), *o.floors]
    headlines = [m for m in HEADLINES if lookup(m).scorer in config.evaluation.scorers]
    metrics = list(dict.fromkeys(objectives + parts + headlines))
    searched = [f"search.{name}" for name in config.space] + (["subset.size"] if config.subset.size or config.subset.include_flags or config.subset.leave_one_out else [])
    return [("metrics", m) for m in metrics] + [("params", p) for p in searched]


def recover(study: optuna.Study, storage, uri: str) -> list[int]:
    """Trials left behind: RUNNING ones of this machine whose process is gone are failed; those, and trials
    stopped by Ctrl-C (also a double one, which leaves no reason), a full disk or a torn journal, are
    enqueued again with the same settings; every failed trial's MLflow run still open is ended with its
    reason. Returns the retried trial numbers."""
    from ..tracking.mlflow_log import finish_run, run_is_open

    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    out = []
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.state == TrialState.RUNNING and t.user_attrs.get("titk.host") == host and not pid_alive(int(t.user_attrs.get("titk.pid", 0))):
            reason = "worker died (its process is gone)"
            if run_id:
                finish_run(uri, run_id, "FAIL", reason)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)  # a finished trial's attributes are final
            storage.set_trial_user_attr(trial_id, "titk.run_closed", True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        elif t.state == TrialState.FAIL:
            # No reason means a second Ctrl-C cut the first one's bookkeeping short.
            reason = t.user_attrs.get("fail_reason") or "interrupted"
            if run_id and not t.user_attrs.get("titk.run_closed") and run_is_open(uri, run_id):
                finish_run(uri, run_id, "FAIL", reason)
        else:
            continue
        if reason in RETRY_REASONS and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **({"titk.baseline": True} if t.user_attrs.get("titk.baseline") else {})})
            out.append(t.number)
    return out


def finished(study: optuna.Study) -> int:
    """Trials that count towards n_trials: complete or pruned, and trained (not answered from a twin)."""
    return sum("duplicate_of" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=FINISHED))


class _StopAfter:
    """Stop when the study has enough finished trials, when this worker fails too often in a row, or when
    the sampler keeps suggesting settings that were already measured (the space is used up)."""

    def __init__(self, n_trials: int, max_failures: int = 5, max_duplicates: int = 20, packed: bool = False):
        self.n_trials, self.max_failures, self.max_duplicates = n_trials, max_failures, max_duplicates
        self.failures = self.duplicates = 0
        self.why: str | None = None
        self.packed = packed  # packed trials are asked for by packing.py, which reads `why` (study.stop is optimize's)

    def __call__(self, study, trial):
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        self.duplicates = self.duplicates + 1 if "duplicate_of" in trial.user_attrs else 0
        if self.failures >= self.max_failures:
            self.why = f"stopped after {self.failures} failed trials in a row"
        elif self.duplicates >= self.max_duplicates:
            self.why = f"stopped: the last {self.duplicates} suggestions were settings already measured (the space is used up)"
        if self.remaining(study) <= 0 and not self.packed:
            study.stop()

    def remaining(self, study) -> int:
        """Trials still wanted: 0 once a reason to stop was found."""
        return 0 if self.why else self.n_trials - finished(study)


def run_sweep(
    config: SweepConfig,
    *,
    workdir: Path,
    config_dir: Path = Path("."),
    storage_url: str | None = None,
    tracking: str | None = None,
    create: bool = True,
    create_only: bool = False,
    n_trials: int | None = None,
    show_progress: bool = True,
    on_trial=None,
    on_note=None,
    on_start=None,
    confirm: dict | None = None,
    confirm_only: bool = False,
    on_confirm=None,
) -> SweepResult:
    """Create or continue a study and run its trials; then (for `titk sweep`, not a worker) confirm the best
    against the baseline (`confirm`: top, seeds, trials override the config's confirm settings;
    `confirm_only`: run no trials)."""
    from ..evaluate.evaluator import build_evaluator
    from ..evaluate.suite import load_suite
    from ..models import load_model
    from ..models.loading import read_architecture
    from ..train.trainee import load_dataset
    from ..train.plan import make_plan

    n_trials = n_trials or config.n_trials
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # Optuna's notes on its own API, not the user's business
    # Everything a user can get wrong is checked here, before any model work and before a study exists.
    split = hold_out(config, load_dataset(config.base))  # held-out photos: identity's references, never trained on
    dataset = split.dataset
    if split.names and on_note:
        on_note(f"held out of training as identity's references (holdout): {', '.join(split.names)}; trials train on the other {len(dataset)}")
    check_space(config, len(dataset))
    check_objective(config)
    for suite in filter(None, (config.evaluation.suite, config.evaluation.personality_suite)):
        load_suite(suite)  # a missing or malformed suite file is named now, not after the study exists
    # Recipe files are named relative to the sweep file, which `titk confirm` (reading sweep.json) does not
    # have; the study it confirms holds its enqueued trials already.
    enqueued = [] if confirm_only else [recipe_params(entry, config, config_dir) for entry in config.enqueue]
    check_values(config, dataset, enqueued)
    arch = read_architecture(config.base.model)
    make_plan(config.base, dataset, arch)
    loaded: dict = {}

    def scorers():
        if "evaluator" not in loaded:
            loaded["bundle"] = load_model(config.base.model_settings)  # the semantics' precision when none is set (kohya: fp32)
            references = split.references(config.evaluation.max_references)
            loaded["evaluator"] = build_evaluator(loaded["bundle"], config.evaluation, references)
        return loaded["evaluator"]

    if config.subset.compose is not None and not (create_only or confirm_only):  # the attribute model reads the images first
        check_composition(config, scorers().image_attributes(), scorers().label_sets)
    workdir = Path(workdir)
    fresh = not workdir.exists()
    try:
        study, storage, tracker, parent, uri, seed = _open_stores(config, workdir, storage_url, tracking, create, enqueued, on_note)
    except TitkError:
        if fresh:  # a study that could not be opened leaves no work directory behind
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    study.set_user_attr(HELDOUT_ATTR, split.names)
    if create_only:
        return SweepResult(study, workdir, uri, storage_label(storage_url, workdir), trials_frame(study))
    recover(study, storage, uri)
    stop = _StopAfter(n_trials, packed=config.pack > 1)

    def evaluator():  # the model and scorers, loaded once, and only when there is work for them
        if "recorded" not in loaded:
            loaded["recorded"] = _record_attributes(study, tracker, parent, scorers().image_attributes())
        return loaded["evaluator"]

    if not confirm_only and finished(study) < n_trials:
        def starting(trial, settings: dict, n_images: int) -> None:
            if on_start:
                on_start(trial.number, finished(study) + 1, n_trials, settings, n_images)

        scorer = evaluator()
        objective = TrialObjective(config, loaded["bundle"], dataset, scorer, tracker, parent, workdir, arch, seed, show_progress, starting)
        callbacks = [stop] + ([on_trial] if on_trial else [])
        timeout = config.timeout_minutes * 60 if config.timeout_minutes else None
        if config.pack > 1:
            optimize_packed(study, objective, config.pack, wanted=lambda: stop.remaining(study), callbacks=callbacks, timeout=timeout,
                            bundle=loaded["bundle"], catch=(TrialFailed,), show_progress=show_progress)
        else:
            study.optimize(objective, n_trials=None, timeout=timeout, catch=(TrialFailed,), callbacks=callbacks, gc_after_trial=True)
    table = trials_frame(study)
    _log_study(tracker, parent, study, table)
    _check_outcome(config, table, stop)
    confirmation = None
    wanted = confirm if confirm is not None else {}
    top = wanted.get("top", config.confirm.top)
    if (create or confirm_only) and not config.objective.pareto and (top > 0 or wanted.get("trials")):
        from .confirm import confirm as run_confirmation

        scorer = evaluator()
        confirmation = run_confirmation(config, study, workdir=workdir, bundle=loaded["bundle"], dataset=dataset, evaluator=scorer,
                                        arch=arch, tracker=tracker, parent=parent, top=top, seeds=wanted.get("seeds"),
                                        trials=wanted.get("trials"), show_progress=show_progress, on_run=on_confirm)
    return SweepResult(study, workdir, uri, storage_label(storage_url, workdir), table, stop.why, confirmation)


def _record_attributes(study, tracker, parent: str, rows: list[dict] | None) -> bool:
    """Once per study: each dataset image's personality labels, as the attribute model reads them (a study
    relates the composition of each trial's images to its TI's personality with them)."""
    if rows and ATTRIBUTES_ATTR not in study.user_attrs:
        study.set_user_attr(ATTRIBUTES_ATTR, rows)
        tracker.client.log_dict(parent, rows, "dataset/attributes.json")
    return True


def _open_stores(config: SweepConfig, workdir: Path, storage_url, tracking, create: bool, enqueued: list[dict], on_note):
    """The study, its storage, the MLflow tracker and study run; sweep.json written."""
    from ..tracking.mlflow_log import Tracker

    uri = tracking_uri(tracking, workdir, storage_url)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # titk reports each trial itself, with its reason
    # Two sweeps starting at once on a fresh work directory must not both create its stores.
    with _work_dir_lock(workdir):
        if not create and storage_url is None and not (workdir / JOURNAL).is_file():
            raise TitkError(f"study {config.study!r} does not exist in {workdir} (no {JOURNAL}); create it first with `titk sweep CONFIG -w {workdir}` or give --storage")
        storage = optuna_storage(storage_url, workdir, config.heartbeat_seconds, config.max_retries,
                                 on_stale=lambda study, trial: _mark_stale(uri, trial), notify=on_note)
        study, created, seed = open_study(config, storage, create, enqueued)
        tracker = Tracker(uri, config.study, artifact_location(uri, workdir))
        parent = tracker.study_run(config.study, {"optuna.storage": storage_label(storage_url, workdir), "titk.config": json.dumps(config.model_dump(mode="json"))[:5000]})
        tracker.set_default_view(parent, default_columns(config), ("metrics", "objective_0" if config.objective.pareto else "objective"))
        record = {"config": config.model_dump(mode="json"), **stores_record(storage_url, tracking)}
        with atomic_path(workdir / "sweep.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return study, storage, tracker, parent, uri, seed


def _work_dir_lock(workdir: Path):
    from filelock import FileLock

    workdir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(workdir / ".titk.lock"))


def _check_outcome(config: SweepConfig, table: pd.DataFrame, stop: _StopAfter) -> None:
    """A sweep that achieved nothing says so, with its failures counted, and exits non-zero."""
    failures = failure_summary(table)
    stopped = f" ({stop.why})" if stop.why and stop.failures else ""
    if measured(table).empty:
        raise SweepFailed(f"study {config.study!r}: no trial was trained to the end{stopped}" + (f"; {failures}" if failures else ""))
    if stopped:
        raise SweepFailed(f"study {config.study!r}: {stop.why}; {failures}")


def _mark_stale(uri: str, trial) -> None:
    """A trial whose worker stopped beating: its MLflow run ends as failed (the storage retries the trial)."""
    from ..tracking.mlflow_log import finish_run

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        finish_run(uri, run_id, "FAIL", "worker stopped beating (killed or lost); the trial is retried")


def _log_study(tracker, parent: str, study: optuna.Study, table: pd.DataFrame) -> None:
    counts = table["state"].value_counts().to_dict() if not table.empty else {}
    metrics = {f"trials.{state.lower()}": n for state, n in counts.items()}
    best = best_trials(study, table, 1)
    if len(study.directions) == 1 and not best.empty:
        metrics["best.value"] = float(best.iloc[0]["value"])
        tracker.log_tags(parent, {"titk.best_trial": int(best.iloc[0]["trial"]), "titk.best_run_id": best.iloc[0]["mlflow_run_id"]})
    tracker.log_metrics(parent, metrics, step=len(table))
    # log_table would append to the previous call's rows when a study is continued; this replaces them
    rows = table.astype(str).to_dict(orient="split", index=False)
    tracker.client.log_dict(parent, {"columns": rows["columns"], "data": rows["data"]}, "trials.json")
    tracker.log_tags(parent, {"titk.updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    tracker.client.set_terminated(parent, status="FINISHED")
