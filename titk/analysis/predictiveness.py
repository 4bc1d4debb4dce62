"""How well each intermediate signal predicts a trial's final score: Spearman's rank correlation over the
study's complete trials, at each step where the signal was measured.

Pruning stops trials on what they show part-way through; that is only sound when the part-way ranking is
the final ranking. The signals are what a trial logs during training: each intermediate score
(`intermediate/<metric>`, `intermediate/objective` on the fixed part of the final suite), the
deterministic validation loss and the training loss. Sign convention: losses are negated before ranking,
so for every signal a positive ρ means "ranks trials as the final objective does" (higher signal, higher
final score) and ρ near 0 means the signal says nothing about the final score.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..evaluate.registry import INTERMEDIATE

LOSSES = ("validation.loss", "train.loss")  # lower is better: negated before ranking
MIN_TRIALS = 3  # fewer pairs than this give no correlation (NaN)
COLUMNS = ["signal", "step", "trials", "spearman", "p_value", "negated"]


def signals(curves: pd.DataFrame) -> list[str]:
    """The metrics of `curves` that are known before the end of a trial, intermediate scores first."""
    names = sorted(set(curves["metric"])) if not curves.empty else []
    scores = [m for m in names if m.startswith(INTERMEDIATE)]
    scores.sort(key=lambda m: (m != INTERMEDIATE + "objective", m))
    return scores + [m for m in LOSSES if m in names]


def signal_correlations(curves: pd.DataFrame, trials: pd.DataFrame, objective: str = "value") -> pd.DataFrame:
    """One row per (signal, step): how many complete trials had the signal at that step, Spearman's ρ
    between the signal (losses negated) and the trials' final `objective`, and its p-value.

    `curves`: long format (trial, metric, step, value), as `StudyData.curves()` gives; `trials`: one row per
    trial with `trial`, `objective` and, when present, `state` (only COMPLETE rows count) and
    `duplicate_of` (answers copied from another trial do not count twice)."""
    from scipy.stats import spearmanr

    done = trials
    if "state" in done:
        done = done[done["state"] == "COMPLETE"]
    if "duplicate_of" in done:
        done = done[done["duplicate_of"].isna()]
    if objective not in done or curves.empty:
        return pd.DataFrame(columns=COLUMNS)
    final = done.set_index("trial")[objective].astype(float).dropna()
    rows = []
    for signal in signals(curves):
        negated = signal in LOSSES
        data = curves[(curves["metric"] == signal) & curves["trial"].isin(final.index)]
        for step, group in data.groupby("step"):
            values = group.groupby("trial")["value"].mean()  # several seeds: their mean, as the trial's objective is
            values = values[np.isfinite(values)]
            n = len(values)
            rho = p = float("nan")
            if n >= MIN_TRIALS:
                x = -values.to_numpy() if negated else values.to_numpy()
                with warnings.catch_warnings():  # a constant signal has no ranking: NaN, said by the NaN
                    warnings.simplefilter("ignore")
                    result = spearmanr(x, final.loc[values.index].to_numpy())
                rho, p = float(result.statistic), float(result.pvalue)
            rows.append({"signal": signal, "step": int(step), "trials": n, "spearman": rho, "p_value": p, "negated": negated})
    return pd.DataFrame(rows, columns=COLUMNS)


def describe(table: pd.DataFrame) -> list[str]:
    """One plain line per signal, at its last step with a correlation (the CLI's and the report's text):
    `intermediate/objective at step 150: ρ = +0.83 (p = 0.04, 6 trials)`."""
    lines = []
    for signal in dict.fromkeys(table["signal"]) if not table.empty else []:
        rows = table[(table["signal"] == signal) & table["spearman"].notna()]
        if rows.empty:
            continue
        row = rows.sort_values("step").iloc[-1]
        name = f"−{signal}" if row["negated"] else signal
        lines.append(f"{name} at step {row['step']}: ρ = {row['spearman']:+.2f} (p = {row['p_value']:.2g}, {row['trials']} trials)")
    return lines
