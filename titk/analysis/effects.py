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
from ..stats import share_interval


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
    """How including each image moves `column`: a least-squares regression of every trial's `column` on
    its images' inclusion indicators (0/1), with `level` t-intervals. Sorted worst first.

    The model is additive: score = baseline + the sum of the included images' effects + noise with one
    variance. The covariance of the coefficients is s² (XᵀX)⁻¹, s² the residual variance on n − rank
    degrees of freedom, and the intervals are Student-t (scipy). Every trial informs every image's estimate
    (the difference of means it replaces used each trial only for the images it was compared on, and its
    other images' effects as noise). The two subset modes differ in what can be estimated:

    - subsets that vary in size (include flags, leave-one-out with the all-images trial, a range of
      sizes), method `ols`: with an intercept; `effect` is the change in the score from adding the image.
    - subsets of one fixed size (and leave-one-out without the all-images trial), method `ols, fixed size`:
      the indicators of every trial sum to the same number, so a baseline is not separable from the images'
      mean effect. Regressed without an intercept; `effect` is the image's coefficient minus the mean
      coefficient of the other images: the change from training on the image in place of an average one of
      the others (what the difference of means estimated, now from every trial).

    `p_value` tests effect = 0. Trials not COMPLETE, answers copied from a twin (`duplicate_of`) and trials
    without a subset are left out. An image in every trial or none has no estimate (`note` says which).
    With too few trials for a residual variance (fewer than the coefficients + 2) or subsets that do not
    tell some images apart, `effect` is the plain difference of means, the intervals are NaN, `method`
    says `difference of means` and `note` (also in `.attrs["note"]`) says why, for the report to print.

    Sampled Shapley values were the alternative. For an additive score the Shapley value of an image *is*
    its coefficient, and Monte Carlo Shapley needs trainings on chains of nested subsets, each image's
    contribution the difference of two noisy trainings: it cannot use the random subsets a sweep draws,
    and needs several times the trainings for the same precision. The regression uses every trial as it
    is (as KernelSHAP and datamodels do) and gives standard errors for free; its price is the additivity
    assumption (no interactions between images), which the residual variance absorbs as noise.
    """
    done = trials.dropna(subset=[column])
    if "state" in done:
        done = done[done["state"] == "COMPLETE"]
    if "duplicate_of" in done:
        done = done[done["duplicate_of"].isna()]  # a copy of another trial's value is not a second measurement
    done = done[done["subset"].map(lambda s: isinstance(s, (list, tuple)))]
    images = list(images or sorted({name for s in done["subset"] for name in s}))
    y = done[column].to_numpy(float)
    x = np.array([[name in set(s) for name in images] for s in done["subset"]], float).reshape(len(y), len(images))
    n_in = x.sum(0).astype(int)
    varies = (n_in > 0) & (n_in < len(y))
    fit = _regression(x[:, varies], y, level)
    table = pd.DataFrame({"image": images, "n_in": n_in, "n_out": len(y) - n_in,
                          "mean_in": [_mean(y[x[:, j] == 1]) for j in range(len(images))],
                          "mean_out": [_mean(y[x[:, j] == 0]) for j in range(len(images))]})
    for name in ("effect", "se", "ci_low", "ci_high", "p_value"):
        table[name] = math.nan
        table.loc[varies, name] = fit[name]
    table["method"] = fit["method"]
    table["note"] = np.where(varies, fit["note"], np.where(n_in == 0, "in no trial", "in every trial"))
    table = table.sort_values("effect", na_position="last").reset_index(drop=True)
    table.attrs.update(method=fit["method"], note=fit["note"], trials=len(y), dof=fit["dof"], level=level)
    return table


def _regression(x: np.ndarray, y: np.ndarray, level: float) -> dict:
    """Per column of `x`: effect, standard error, interval and p-value (see image_attribution)."""
    n, p = x.shape
    empty = {"effect": np.zeros(0), "se": np.zeros(0), "ci_low": np.zeros(0), "ci_high": np.zeros(0), "p_value": np.zeros(0)}
    if p == 0:
        reason = "every trial trained on the same images" if n else "no finished trial with a subset"
        return {**empty, "method": "none", "note": reason, "dof": 0}
    sizes = x.sum(1)
    fixed = bool(np.ptp(sizes) == 0)
    design = x if fixed else np.column_stack([np.ones(n), x])
    # effect = contrast · coefficients: the image's coefficient, or (fixed size) it minus the others' mean
    contrast = (np.eye(p) - (np.ones((p, p)) - np.eye(p)) / (p - 1) if p > 1 else np.eye(p)) if fixed else np.eye(p + 1)[1:]
    needed = design.shape[1] + 2
    method = "ols, fixed size" if fixed else "ols"
    rank = np.linalg.matrix_rank(design)
    if n < needed or rank < design.shape[1] or (fixed and p == 1):
        effect = np.array([_mean(y[x[:, j] == 1]) - _mean(y[x[:, j] == 0]) for j in range(p)])
        if n < needed:
            why = f"{n} trials; a regression on {p} images needs at least {needed} for intervals"
        else:
            why = "the subsets do not tell some images apart (e.g. two always trained together); more random subsets are needed"
        nan = np.full(p, math.nan)
        return {"effect": effect, "se": nan, "ci_low": nan, "ci_high": nan, "p_value": nan,
                "method": "difference of means", "note": why, "dof": 0}
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = n - rank
    resid = y - design @ coef
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(design.T @ design)
    effect = contrast @ coef
    se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", contrast, cov, contrast), 0.0, None))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        p_value = np.where(se > 0, 2 * stats.t.sf(np.abs(effect / se), dof), np.where(effect == 0, 1.0, 0.0))
    return {"effect": effect, "se": se, "ci_low": effect - half, "ci_high": effect + half, "p_value": p_value,
            "method": method, "note": "", "dof": dof}


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _histograms(trials: pd.DataFrame):
    """(trial, label set, histogram) for every trial that recorded personality histograms."""
    for trial, hists in trials[["trial", "personality"]].itertuples(index=False):
        if isinstance(hists, dict):
            for name, h in hists.items():
                yield trial, name, h


SOURCES = ("generated", "dataset", "untrained")
PERSONALITY_COLUMNS = ["trial", "set", "label"] + [f"{s}{end}" for s in SOURCES for end in ("", "_low", "_high")] + [f"n_{s}" for s in SOURCES]


def personality_table(trials: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Long format: trial, label set, label, and its share among the trial's generated images, in the dataset
    and among the untrained start's images (sweeps record them; NaN otherwise), each with a `level` interval
    (`share_interval`) over the images it was counted on (`n_generated`, `n_dataset`, `n_untrained`): a share
    of 8 images is known only roughly, and the table says how roughly."""
    rows = []
    for trial, name, h in _histograms(trials):
        counts = {s: np.asarray(h[s], int) if h.get(s) is not None else None for s in SOURCES}
        for i, label in enumerate(h["labels"]):
            row = {"trial": trial, "set": name, "label": label}
            for s, c in counts.items():
                n = int(c.sum()) if c is not None else 0
                low, high = share_interval(c[i], n, level) if c is not None else (math.nan, math.nan)
                row |= {s: c[i] / max(n, 1) if c is not None else math.nan, f"{s}_low": low, f"{s}_high": high, f"n_{s}": n}
            rows.append(row)
    return pd.DataFrame(rows, columns=PERSONALITY_COLUMNS)


def dose_response(trials: pd.DataFrame, label_set: str, label: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """Per trial, one label's share among the images it trained on (`dataset`) against its share among the
    TI's generated images (`generated`, with its `level` interval): how a dataset's composition carries into
    its TI's personality. `label`: by default the label most common over the trials' datasets. The table's
    attrs hold Spearman's rank correlation over the trials (`rho`, `p`, `trials`; NaN with fewer than 3
    distinct dataset shares)."""
    from scipy import stats

    table = personality_table(trials, level)
    table = table[table["set"] == label_set]
    if label is None and not table.empty:
        label = table.assign(count=table["dataset"] * table["n_dataset"]).groupby("label")["count"].sum().idxmax()
    rows = table[table["label"] == label][["trial", "dataset", "n_dataset", "generated", "generated_low", "generated_high", "n_generated"]]
    rows = rows.sort_values(["dataset", "trial"]).reset_index(drop=True)
    rho = p = math.nan
    if rows["dataset"].nunique() >= 3:
        rho, p = (float(x) for x in stats.spearmanr(rows["dataset"], rows["generated"]))
    rows.attrs |= {"set": label_set, "label": label, "rho": rho, "p": p, "trials": len(rows), "level": level}
    return rows


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
