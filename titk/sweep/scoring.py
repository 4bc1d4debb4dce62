"""From scorecards to a trial's result: the objective, seeds aggregated, and the floors as constraints.

These are pure functions of summaries, so the objective, the constraints and what analysis reads back are
always computed from the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ObjectiveSettings
from ..evaluate.registry import lower_is_better


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric(summary: dict, name: str, missing: float) -> float:
    """A summary metric, or `missing` where it is absent or NaN (no face found in any image, say). `missing`
    is the bad end of a higher-is-better metric; a lower-is-better one (the copy index) gets −missing, so
    that a missing value is never a reward."""
    value = summary.get(name)
    if _finite(value):
        return float(value)
    return -missing if lower_is_better(name) else missing


def objective_names(config) -> list[str]:
    """What the objective is called (optuna-dashboard's axis labels, the confirmation's sentence)."""
    o = config.objective
    if o.pareto:
        return list(o.pareto)
    if len(o.metrics) == 1 and next(iter(o.metrics.values())) == 1.0:
        return list(o.metrics)
    return [" + ".join(f"{weight:g}×{name}" for name, weight in o.metrics.items())]


def objective_value(summary: dict, objective: ObjectiveSettings) -> float | tuple[float, ...]:
    """The weighted sum to maximise (or the Pareto pair) of one summary."""
    if objective.pareto:
        return tuple(metric(summary, m, objective.missing_value) for m in objective.pareto)
    return sum(w * metric(summary, m, objective.missing_value) for m, w in objective.metrics.items())


@dataclass
class SeedAggregate:
    """A trial's metrics over its seeds: each metric's mean over the seeds where it is a number."""

    mean: dict[str, float]
    counts: dict[str, int]  # seeds that gave each metric a number
    seeds: int


def aggregate_seeds(summaries: list[dict]) -> SeedAggregate:
    """NaN-aware mean over seeds: a seed whose metric is NaN (no face found) does not count towards that
    metric's mean, rather than counting as 0; a metric NaN in every seed stays NaN."""
    names = sorted({k for s in summaries for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mean, counts = {}, {}
    for name in names:
        values = [float(s[name]) for s in summaries if _finite(s.get(name))]
        counts[name] = len(values)
        mean[name] = sum(values) / len(values) if values else float("nan")
    return SeedAggregate(mean, counts, len(summaries))


def floor_constraints(summary: dict, objective: ObjectiveSettings) -> dict[str, float]:
    """Optuna constraint values (feasible when ≤ 0) for each floor, from the aggregated summary; the floor of
    a lower-is-better metric is a ceiling."""
    out = {}
    for name, bound in objective.floors.items():
        value = metric(summary, name, objective.missing_value)
        out[f"floor:{name}"] = value - bound if lower_is_better(name) else bound - value
    return out


def add_histograms(total: dict | None, hists: dict | None) -> dict | None:
    """Personality label counts summed over seeds."""
    if not hists:
        return total
    if total is None:
        return {name: dict(h) for name, h in hists.items()}
    for name, h in hists.items():
        total[name]["generated"] = [a + b for a, b in zip(total[name]["generated"], h["generated"])]
    return total
