"""Sweep settings: the search space, the dataset subsets, the objective, confirmation, and the sweep file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..errors import TitkError
from ..settings_files import apply_overrides, merge, parse, read_yaml
from .evaluation import EvalSettings
from .training import Strict, TrainConfig

# ------------------------------------------------------------------------------------------------ sweeps


class ParamSpec(Strict):
    """One searched setting: a `choice` of values, or a range `low`..`high` (ints if both are ints)."""

    choice: list | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None


class ComposeSpec(Strict):
    """Subsets of `size` images of which a searched `share` carry one label of an attribute, drawn from a larger
    pool: a study of how a dataset's composition shapes its TI's personality (the dose-response)."""

    attribute: str = Field(description="a personality label set, e.g. clothing (the toy world's, or evaluation.labels')")
    label: str = Field(description="the label whose share is controlled, as the label set names it, e.g. tank top")
    size: int = Field(ge=1, description="images per trial")
    share: ParamSpec = Field(description="the share of them that carry the label: a choice (e.g. [0.2, 0.5, 0.8]) or a range 0..1")

    @model_validator(mode="after")
    def _shares(self):
        values = self.share.choice if self.share.choice is not None else [self.share.low, self.share.high]
        if not values or any(not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in values):
            raise ValueError(f"share: {values} must be numbers from 0 to 1")
        return self


class SubsetSpec(Strict):
    """Which images a trial trains on: all (default), random subsets, per-image include flags, leave-one-out, or
    subsets of a controlled composition."""

    size: int | ParamSpec | None = Field(None, description="random subsets of this size, drawn in passes so every image is in as many trials (or a searched range of sizes)")
    include_flags: bool = Field(False, description="one include/exclude flag per image, searched")
    leave_one_out: bool = Field(False, description="each trial leaves out one image (or none)")
    min_images: int = Field(3, ge=1, description="with include flags: fewer images is infeasible")
    compose: ComposeSpec | None = Field(None, description="subsets with a searched share of one attribute's label")


class IntermediateSettings(Strict):
    """Which part of the final suite the intermediate evaluations generate: its images at the first `seeds`
    seeds of each prompt, with the final suite's sampling settings, so that an intermediate value and a final
    value are on one scale (the final value is the same mean over more seeds). `per_kind` takes only the
    first prompts of each kind: cheaper, but its mix of kinds is not the final suite's, so its level can differ."""

    seeds: int = Field(1, ge=1, description="the first seeds of each prompt of evaluation.suite")
    per_kind: int | None = Field(None, ge=1, description="only the first prompts of each kind; default: every prompt")


class HoldoutSpec(Strict):
    """Without `references`: dataset images held out of every trial's training, as identity's references."""

    share: float = Field(0.2, ge=0.0, lt=1.0, description="share of the dataset held out; 0 = none")
    min_images: int = Field(2, ge=1, description="held out at least this many")
    min_dataset: int = Field(8, ge=1, description="smaller datasets are not split")


class ObjectiveSettings(Strict):
    metrics: dict[str, float] = Field(default_factory=lambda: {"identity.similarity": 1.0}, description="weighted sum to maximise (a negative weight for a lower-is-better metric)")
    floors: dict[str, float] = Field(default_factory=lambda: {"identity.detection_rate": 0.5}, description="minimum values, as constraints (maximum values for lower-is-better metrics: identity.copy_index)")
    pareto: list[str] | None = Field(None, description="two metrics to maximise together (no pruning)")
    pruner: Literal["median", "halving", "hyperband", "wilcoxon", "none"] = Field(
        "median", description="median; halving (successive halving) and hyperband on the same intermediate scores; "
        "wilcoxon on the final images; none")
    pruner_startup_trials: int = Field(2, ge=0, description="median: trials that finish before any is pruned")
    reduction_factor: int = Field(3, ge=2, description="halving, hyperband: 1 in this many trials goes on at each rung")
    pruner_warmup_steps: int = Field(0, ge=0, description="median: steps of each trial before it may be pruned")
    wilcoxon_p: float = Field(0.1, gt=0.0, lt=1.0, description="wilcoxon: p-value below which a trial is pruned")
    eval_every: int | None = Field(None, ge=0, description="steps between intermediate evaluations; default: a quarter of the run; 0 = none")
    intermediate: IntermediateSettings = Field(default_factory=IntermediateSettings, description="the part of the final suite scored every eval_every steps")
    missing_value: float = Field(-1.0, description="value of a metric that is NaN (e.g. similarity when no face was found)")

    @model_validator(mode="before")
    @classmethod
    def _no_intermediate_suite(cls, data):
        # Scores of a separate quick suite did not predict the final ones; the setting that replaced it says so.
        if isinstance(data, dict) and "intermediate_suite" in data:
            raise ValueError(
                "intermediate_suite is gone: intermediate evaluations now generate part of evaluation.suite; "
                "delete it (default: every prompt at its first seed) or write intermediate: {seeds: 1, per_kind: 1}"
            )
        return data


class ConfirmSettings(Strict):
    """After the search: the best trials and the baseline trained again on fresh seeds and compared, paired."""

    top: int = Field(2, ge=0, description="best trials confirmed against the baseline; 0 = no confirmation")
    seeds: int | None = Field(None, ge=2, le=50, description="fresh seeds per setting; default: from the measured seed noise (3 to 10)")
    min_effect: float = Field(0.02, gt=0.0, description="the smallest objective difference worth telling apart (sets the default seeds)")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="confidence of the intervals (Bonferroni-adjusted over the candidates)")


class SweepConfig(Strict):
    study: str = Field(description="the Optuna study name, also the MLflow experiment name")
    base: TrainConfig = Field(description="the training config every trial starts from")
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    subset: SubsetSpec = Field(default_factory=SubsetSpec)
    repeats: int = Field(1, ge=1, description="seeds per trial; the objective is their mean")
    baseline_seeds: int = Field(3, ge=3, description="seeds of the baseline trial (the first enqueued entry, else the base settings): the study's seed noise")
    confirm: ConfirmSettings = Field(default_factory=ConfirmSettings)
    retrain_duplicates: bool = Field(False, description="train a suggestion equal to a measured trial again (default: answer it from that trial)")
    n_trials: int = Field(20, ge=1, description="complete or pruned trials wanted in the study")
    timeout_minutes: float | None = None
    sampler: Literal["tpe", "random", "gp"] = "tpe"
    seed: int = 0
    pack: int = Field(1, ge=1, le=64, description="trials a worker trains at once (and seeds confirmation trains at once), one UNet call for all their micro-batches "
                      "(packed trials: the same results, more trials per hour where one trial leaves the GPU idle)")
    enqueue: list[dict | str] = Field(default_factory=list, description="first trials: parameter mappings or recipe files")
    bs_ga_within_dataset: bool = Field(True, description="constraint: batch size × GA ≤ number of images")
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    references: Path | None = Field(None, description="photos of the person not in the dataset, for identity (default: held out from the dataset, see holdout)")
    holdout: HoldoutSpec = Field(default_factory=HoldoutSpec, description="without references: dataset images held out of training as identity's references")
    heartbeat_seconds: int = Field(60, ge=1, description="RDB storages: a trial whose worker is silent twice this long is failed and retried")
    max_retries: int = Field(2, ge=0)


def load_sweep_config(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    """A sweep YAML; `base` may be a mapping or the path of a training config (relative to the sweep file).

    The base is read first; `base_overrides`, then each `--set` (in order) are merged into the result."""
    path = Path(path)
    data = read_yaml(path)
    base = data.get("base")
    if isinstance(base, str):
        base = read_yaml(Path(base) if Path(base).is_absolute() else path.parent / base)
    elif base is not None and not isinstance(base, dict):
        raise TitkError(f"{path}: base: expected a mapping of training settings or the path of a training config")
    base_overrides = data.pop("base_overrides", None) or {}
    if not isinstance(base_overrides, dict):
        raise TitkError(f"{path}: base_overrides: expected a mapping of training settings")
    data["base"] = merge(base or {}, base_overrides)
    sets = [f"base.{item.removeprefix('base_overrides.')}" if item.startswith("base_overrides.") else item for item in overrides]
    return parse(SweepConfig, apply_overrides(data, sets), str(path))


