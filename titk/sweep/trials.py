"""A study's trials as one pandas frame, for the CLI summary, the study run in MLflow and analysis alike."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..stats import Interval, mean_interval

ATTRIBUTES_ATTR = "titk.image_attributes"  # the study's record of each dataset image's personality labels


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial that ran (waiting ones are not results): state, value(s), feasibility, parameters,
    the mean summary metrics, the subset, each seed's value, histograms, reasons and timing."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        # Optuna gives a pruned trial its last intermediate value; it is not a result, so it is left out here.
        values = t.values if t.state == TrialState.COMPLETE else []
        rows.append({
            "trial": t.number, "state": t.state.name,
            **{f"value{i if len(values) > 1 else ''}": v for i, v in enumerate(values)},
            "feasible": all(c <= 0 for c in (t.constraints or {}).values()),
            "baseline": bool(t.user_attrs.get("titk.baseline")),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            **{f"param.{k}": v for k, v in t.params.items() if not k.startswith("include:")},
            **{f"metric.{k}": v for k, v in t.user_attrs.get("summary", {}).items()},
            "subset": t.user_attrs.get("subset"),
            "values_per_seed": t.user_attrs.get("values_per_seed"),
            "personality": t.user_attrs.get("personality"),
            "reason": t.user_attrs.get("fail_reason"),
            "retry_of": t.user_attrs.get("retry_of"),
            "duplicate_of": t.user_attrs.get("duplicate_of"),  # settings already measured: answered, not trained
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None,
        })
    return pd.DataFrame(rows)


def best_trials(study: optuna.Study, table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The Pareto front, or the k best complete trials (feasible ones first)."""
    if table.empty or "value" not in table and "value0" not in table:
        return table.head(0)
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        return table[table["trial"].isin(front)]
    done = measured(table).sort_values(["feasible", "value"], ascending=[False, False])
    return done.head(k)


def measured(table: pd.DataFrame) -> pd.DataFrame:
    """Complete trials that trained (not answers copied from an earlier trial with the same settings)."""
    if table.empty:
        return table
    return table[(table["state"] == "COMPLETE") & table["duplicate_of"].isna()]


def failure_summary(table: pd.DataFrame) -> str:
    """`5 failed: 3 × loss became nan at step 1; 2 × out of GPU memory`, or "" when none failed."""
    if table.empty:
        return ""
    failed = table[table["state"] == "FAIL"]
    if failed.empty:
        return ""
    reasons = failed["reason"].fillna("no reason recorded").value_counts()
    return f"{len(failed)} failed: " + "; ".join(f"{n} × {reason}" for reason, n in reasons.items())


def seed_noise(table: pd.DataFrame, level: float = 0.95) -> Interval | None:
    """The study's seed-to-seed spread: the baseline trial's objective over its seeds (`.sd`, and the mean
    with its interval); None without a complete multi-seed baseline."""
    if table.empty or "baseline" not in table or "values_per_seed" not in table:
        return None
    rows = table[table["baseline"] & (table["state"] == "COMPLETE")]
    runs = [v for v in rows["values_per_seed"] if isinstance(v, list) and len(v) >= 2 and not isinstance(v[0], list)]
    if not runs:
        return None
    return mean_interval(max(runs, key=len), level)


def seed_interval(values, level: float = 0.95) -> Interval:
    """A trial's objective over its seeds (one seed: no interval)."""
    if not isinstance(values, list) or (values and isinstance(values[0], list)):
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    return mean_interval(values, level)
