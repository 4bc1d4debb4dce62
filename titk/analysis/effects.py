"""What a study teaches: which settings matter, which images help or hurt, the identity–editability front,
how each TI's personality compares with its dataset's, and how much a result depends on the seed.

Each function takes plain DataFrames (from `titk.analysis.study`) or an Optuna study and returns a
DataFrame, so notebooks and the report stay thin.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
from scipy import stats

from ..evaluate.metrics import entropy, js_divergence


def param_importance(study: optuna.Study, objective: int = 0) -> pd.Series:
    """Importance of each searched setting for one objective (PED-ANOVA, Optuna's default; fANOVA when
    PED-ANOVA cannot judge the study). Per-image include flags are left out (see image_attribution)."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    params = sorted({p for t in finished for p in t.params if not p.startswith("include:")})
    if len(finished) < 2 or not params:
        return pd.Series(dtype=float, name="importance")
    target = (lambda t: t.values[objective]) if len(study.directions) > 1 else None
    for evaluator in (None, optuna.importance.FanovaImportanceEvaluator(seed=0)):
        try:
            result = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params, target=target)
            return pd.Series({k: float(v) for k, v in result.items()}, name="importance").sort_values(ascending=False)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
    return pd.Series(dtype=float, name="importance")


def pareto_front(trials: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The trials no other trial beats on both columns (both maximised), sorted by `a`."""
    done = trials.dropna(subset=[a, b])
    keep = []
    for i, row in done.iterrows():
        dominated = ((done[a] >= row[a]) & (done[b] >= row[b]) & ((done[a] > row[a]) | (done[b] > row[b]))).any()
        if not dominated:
            keep.append(i)
    return done.loc[keep].sort_values(a)


def image_attribution(trials: pd.DataFrame, column: str, images: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """How including each image moves `column`, from trials that trained on different subsets.

    Per image: the mean of `column` over trials that included it minus the mean over those that left it out,
    with Welch's standard error and a `level` confidence interval (t distribution, Welch–Satterthwaite
    degrees of freedom). An image in every trial (or none) has no estimate.
    """
    done = trials.dropna(subset=[column])
    done = done[done["subset"].map(lambda s: isinstance(s, (list, tuple)))]
    images = images or sorted({name for s in done["subset"] for name in s})
    rows = []
    for name in images:
        inside = done["subset"].map(lambda s, n=name: n in s)
        a, b = done.loc[inside, column].to_numpy(float), done.loc[~inside, column].to_numpy(float)
        row = {"image": name, "n_in": len(a), "n_out": len(b), "mean_in": _mean(a), "mean_out": _mean(b)}
        row["effect"] = row["mean_in"] - row["mean_out"]
        se, dof = _welch(a, b)
        row["se"] = se
        half = stats.t.ppf(0.5 + level / 2, dof) * se if se == se and dof == dof else math.nan
        row["ci_low"], row["ci_high"] = row["effect"] - half, row["effect"] + half
        rows.append(row)
    return pd.DataFrame(rows).sort_values("effect", na_position="last").reset_index(drop=True)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0, math.inf
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return se, dof


def _histograms(trials: pd.DataFrame):
    """(trial, label set, histogram) for every trial that recorded personality histograms."""
    for trial, hists in trials[["trial", "personality"]].itertuples(index=False):
        if isinstance(hists, dict):
            for name, h in hists.items():
                yield trial, name, h


def personality_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Long format: trial, label set, label, share among the trial's generated images, share in the dataset."""
    rows = []
    for trial, name, h in _histograms(trials):
        gen, data = np.asarray(h["generated"], float), np.asarray(h["dataset"], float)
        for label, g, d in zip(h["labels"], gen / max(gen.sum(), 1), data / max(data.sum(), 1)):
            rows.append({"trial": trial, "set": name, "label": label, "generated": g, "dataset": d})
    return pd.DataFrame(rows, columns=["trial", "set", "label", "generated", "dataset"])


def personality_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial and label set: entropy of the generated labels and of the dataset's, and their JS divergence."""
    rows = [{
        "trial": trial, "set": name, "entropy": entropy(h["generated"]), "dataset_entropy": entropy(h["dataset"]),
        "js_to_dataset": js_divergence(h["generated"], h["dataset"]),
        "top_label": h["labels"][int(np.argmax(h["generated"]))] if sum(h["generated"]) else None,
    } for trial, name, h in _histograms(trials)]
    return pd.DataFrame(rows)


def personality_divergence(trials: pd.DataFrame, label_set: str) -> pd.DataFrame:
    """JS divergence between every pair of trials' generated histograms of one label set."""
    hists = {t: np.asarray(h[label_set]["generated"], float) for t, h in trials[["trial", "personality"]].itertuples(index=False)
             if isinstance(h, dict) and label_set in h}
    names = sorted(hists)
    return pd.DataFrame([[js_divergence(hists[a], hists[b]) for b in names] for a in names], index=names, columns=names)


def label_shares(trials: pd.DataFrame, label_set: str) -> pd.DataFrame:
    """The trials with one column per label: its share among the generated images (for attribution)."""
    table = personality_table(trials)
    table = table[table["set"] == label_set]
    if table.empty:
        return trials.copy()
    wide = table.pivot_table(index="trial", columns="label", values="generated").add_prefix(f"{label_set}=").reset_index()
    return trials.merge(wide, on="trial", how="left")


def seed_variance(trials: pd.DataFrame, top: int = 5, level: float = 0.95) -> pd.DataFrame:
    """For the best trials with several seeds: mean, standard deviation and a `level` t-interval of the
    objective across seeds."""
    rows = []
    with_seeds = trials[trials["values_per_seed"].map(lambda v: isinstance(v, list) and len(v) >= 2 and not isinstance(v[0], list))]
    for row in with_seeds.sort_values("value", ascending=False).head(top).itertuples(index=False):
        values = np.asarray(row.values_per_seed, float)
        n, mean, sd = len(values), float(values.mean()), float(values.std(ddof=1))
        half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        rows.append({"trial": row.trial, "seeds": n, "mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half, "values": list(values)})
    return pd.DataFrame(rows, columns=["trial", "seeds", "mean", "std", "ci_low", "ci_high", "values"])
