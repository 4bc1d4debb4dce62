"""The pruning policy: which rule may stop a trial early, on which scores, and when it is asked.

- median: Optuna's MedianPruner on the objective of each intermediate scorecard. Intermediate evaluations
  generate a fixed part of the final suite (`objective.intermediate`: the same prompts, seeds and sampling),
  so the values compared are on the final objective's scale.
- halving, hyperband: Optuna's SuccessiveHalvingPruner and HyperbandPruner on the same intermediate values,
  a training step being the resource: at each rung (the first at `eval_every` steps) only the best
  1/`reduction_factor` of the trials that reached it go on; Hyperband runs several such brackets, from
  aggressive to none, so that a slow starter is not always cut.
- wilcoxon: Optuna's WilcoxonPruner on the final evaluation, prompt by prompt, each image an instance
  (the same prompt and seed in every trial), so a hopeless trial stops before its whole suite is generated.
- none, or a Pareto study: nothing is pruned.

Only a trial's first seed is pruned; its other seeds are evaluated in full. Scoring never prunes: the
trial asks this policy.

A pruned trial is not a result. Optuna itself stores a pruned trial's last intermediate value as its value
(a per-image value under the Wilcoxon rule); titk records what stopped it in the trial's user attribute
`titk.pruned` ({"rule", "step", "value"}: the training step and the intermediate objective there, or
{"rule", "images"}) so that tables and figures can show it as stopped, never as a final score.
"""

from __future__ import annotations

import optuna

from ..config import ObjectiveSettings
from ..evaluate.registry import per_image_column
from .scoring import metric


class Pruning:
    def __init__(self, objective: ObjectiveSettings):
        self.objective = objective
        self.rule = "none" if objective.pareto else objective.pruner

    def optuna_pruner(self) -> optuna.pruners.BasePruner:
        o = self.objective
        if self.rule == "wilcoxon":
            return optuna.pruners.WilcoxonPruner(p_threshold=o.wilcoxon_p)
        if self.rule == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=o.pruner_startup_trials, n_warmup_steps=o.pruner_warmup_steps)
        first = o.eval_every or "auto"  # the first rung: the first intermediate evaluation
        if self.rule == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=o.reduction_factor)
        if self.rule == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1 if first == "auto" else first, reduction_factor=o.reduction_factor)
        return optuna.pruners.NopPruner()

    @property
    def on_intermediate(self) -> bool:
        return self.rule in ("median", "halving", "hyperband")

    @property
    def on_final_images(self) -> bool:
        return self.rule == "wilcoxon"

    def check_intermediate(self, trial: optuna.Trial, value: float, step: int) -> None:
        """Report an intermediate objective value; raises TrialPruned when the rule says so."""
        trial.report(value, step)
        if trial.should_prune():
            trial.set_user_attr("titk.pruned", {"rule": self.rule, "step": step, "value": float(value)})
            raise optuna.TrialPruned(f"pruned at step {step}")

    def image_values(self, table) -> list[float]:
        """The objective of each image of a score table (rows in suite order)."""
        o = self.objective
        columns = {name: per_image_column(name) for name in o.metrics}
        return [
            sum(w * metric({name: getattr(row, columns[name], float("nan"))}, name, o.missing_value) for name, w in o.metrics.items())
            for row in table.itertuples(index=False)
        ]

    def check_images(self, trial: optuna.Trial, values: list[float], first_index: int) -> None:
        """Report per-image values (instances numbered across the suite); raises TrialPruned when the rule says so."""
        for j, value in enumerate(values):
            trial.report(value, first_index + j)
        if trial.should_prune():
            trial.set_user_attr("titk.pruned", {"rule": "wilcoxon", "images": first_index + len(values)})
            raise optuna.TrialPruned(f"pruned after {first_index + len(values)} evaluation images")
