"""Running a study: create or continue it, run trials one after another on one loaded model, summarise.

`titk sweep` creates the study if needed (with its MLflow experiment and parent run and the enqueued
recipes) and runs trials; `titk worker` joins a study that exists. The study counts complete and pruned
trials towards `n_trials`, so a resumed sweep never repeats a finished trial, and failed ones are retried.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..config import SweepConfig
from ..errors import TitkError
from .objective import TrialFailed, Worker
from .space import check_space, recipe_params
from .storage import artifact_location, optuna_storage, pid_alive, storage_label, tracking_uri

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
METRIC_SCORERS = {"identity.": "identity", "clip_t": "clip", "clip_i": "clip", "diversity.": "diversity", "personality.": "personality", "norms.": "norms"}


@dataclass
class SweepResult:
    study: optuna.Study
    workdir: Path
    tracking_uri: str
    storage: str
    table: pd.DataFrame


def _sampler(config: SweepConfig):
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed)


def _pruner(config: SweepConfig):
    o = config.objective
    if o.pareto or o.pruner == "none":
        return optuna.pruners.NopPruner()
    if o.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def check_objective(config: SweepConfig) -> None:
    o = config.objective
    names = list(o.pareto or o.metrics) + list(o.floors)
    if o.pareto is not None and len(o.pareto) != 2:
        raise TitkError("objective.pareto: give exactly two metrics")
    for name in names:
        scorer = next((s for prefix, s in METRIC_SCORERS.items() if name.startswith(prefix)), None)
        if scorer is None:
            raise TitkError(f"objective: {name!r} is not a metric titk computes (see docs/metrics.md)")
        if scorer not in config.evaluation.scorers:
            raise TitkError(f"objective: {name!r} needs the {scorer} scorer, which evaluation.scorers leaves out")


def open_study(config: SweepConfig, storage, create: bool, base_dir: Path) -> tuple[optuna.Study, bool]:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    exists = config.study in names
    if not exists and not create:
        raise TitkError(f"study {config.study!r} does not exist in this storage; create it first with `titk sweep CONFIG --storage ... --create-only`")
    directions = ["maximize", "maximize"] if config.objective.pareto else ["maximize"]
    if exists:
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=_sampler(config), pruner=_pruner(config))
        if len(study.directions) != len(directions):
            raise TitkError(f"study {config.study!r} exists with {len(study.directions)} objective(s); this config has {len(directions)}")
        return study, False
    study = optuna.create_study(study_name=config.study, storage=storage, directions=directions, sampler=_sampler(config), pruner=_pruner(config), load_if_exists=True)
    for entry in config.enqueue:
        study.enqueue_trial(recipe_params(entry, config, base_dir), user_attrs={"enqueued": entry if isinstance(entry, str) else "params"}, skip_if_exists=True)
    study.set_user_attr("titk.config", config.model_dump(mode="json"))
    return study, True


def recover(study: optuna.Study) -> list[int]:
    """Trials this machine left behind: RUNNING ones whose process is gone are failed; those, and trials
    interrupted by Ctrl-C, are enqueued again with the same settings. Returns the retried trial numbers."""
    host = socket.gethostname()
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    out = []
    for t in study.get_trials(deepcopy=False):
        stale = t.state == TrialState.RUNNING and t.user_attrs.get("titk.host") == host and not pid_alive(int(t.user_attrs.get("titk.pid", 0)))
        if stale:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker died (its process is gone)")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") in ("interrupted", "worker died (its process is gone)")
        if (stale or interrupted) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            out.append(t.number)
    return out


class _StopAfter:
    """Stop when the study has enough finished trials, or when this worker fails too often in a row."""

    def __init__(self, n_trials: int, max_failures: int = 5):
        self.n_trials, self.max_failures, self.failures = n_trials, max_failures, 0

    def __call__(self, study, trial):
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if done >= self.n_trials or self.failures >= self.max_failures:
            study.stop()


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
) -> SweepResult:
    from ..evaluate.evaluator import Evaluator, load_references
    from ..models import load_model
    from ..models.loading import read_architecture
    from ..train.loop import load_dataset
    from ..train.plan import make_plan
    from ..tracking.mlflow_log import Tracker

    n_trials = n_trials or config.n_trials
    # Everything a user can get wrong is checked here, before any model work.
    dataset = load_dataset(config.base)
    check_space(config, len(dataset))
    check_objective(config)
    arch = read_architecture(config.base.model)
    make_plan(config.base, dataset, arch)
    workdir = Path(workdir)
    tracker_stub = {}
    storage = optuna_storage(storage_url, workdir, config.heartbeat_seconds, config.max_retries,
                             on_stale=lambda study, trial: _mark_stale(tracker_stub, trial))
    uri = tracking_uri(tracking, workdir, storage_url)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # titk reports each trial itself, with its reason
    study, created = open_study(config, storage, create, config_dir)
    tracker = Tracker(uri, config.study, artifact_location(uri, workdir))
    tracker_stub["tracker"] = tracker
    parent = tracker.study_run(config.study, {"optuna.storage": storage_label(storage_url, workdir), "titk.config": json.dumps(config.model_dump(mode="json"))[:5000]})
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sweep.json").write_text(json.dumps({"config": config.model_dump(mode="json"), "storage": storage_label(storage_url, workdir), "tracking_uri": uri}, indent=2))
    if not create_only:
        recover(study)
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if done < n_trials:
            bundle = load_model(config.base.model)
            references = load_references(config.references or config.base.data.path, config.evaluation.max_references)
            evaluator = Evaluator(bundle, config.evaluation, references, **_world_scorers(config))
            worker = Worker(config, bundle, dataset, evaluator, tracker, parent, workdir, arch, show_progress)
            callbacks = [_StopAfter(n_trials)] + ([on_trial] if on_trial else [])
            study.optimize(worker, n_trials=None, timeout=config.timeout_minutes * 60 if config.timeout_minutes else None,
                           catch=(TrialFailed,), callbacks=callbacks, gc_after_trial=True)
    table = trials_table(study)
    _log_study(tracker, parent, study, table)
    return SweepResult(study, workdir, uri, storage_label(storage_url, workdir), table)


def _world_scorers(config: SweepConfig) -> dict:
    if config.evaluation.world != "toyworld":
        return {}
    from ..toyworld.scorers import toy_scorers

    return toy_scorers()


def _mark_stale(stub: dict, trial) -> None:
    tracker, run_id = stub.get("tracker"), trial.user_attrs.get("mlflow_run_id")
    if tracker and run_id:
        tracker.finish(run_id, "FAIL", "worker stopped beating (killed or lost); the trial is retried")


def trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.values is not None else []
        rows.append({
            "trial": t.number, "state": t.state.name, **{f"value{i if len(values) > 1 else ''}": v for i, v in enumerate(values)},
            "feasible": all(c <= 0 for c in _constraint_values(t)),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "reason": t.user_attrs.get("fail_reason"),
            "retry_of": t.user_attrs.get("retry_of"), **{f"param.{k}": v for k, v in t.params.items() if not k.startswith("include:")},
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None,
        })
    return pd.DataFrame(rows)


def _constraint_values(trial) -> list[float]:
    constraints = getattr(trial, "constraints", None) or {}
    return list(constraints.values()) if isinstance(constraints, dict) else list(constraints)


def best_trials(study: optuna.Study, table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    if table.empty or "value" not in table and "value0" not in table:
        return table.head(0)
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        return table[table["trial"].isin(front)]
    done = table[table["state"] == "COMPLETE"].sort_values(["feasible", "value"], ascending=[False, False])
    return done.head(k)


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
