"""One trial: suggest settings and images, train, evaluate on the way (pruning) and at the end, log it all.

The worker's model, latent cache and evaluator are shared by every trial it runs. A trial that fails
(NaN loss, out of memory, any error) is recorded as failed with its reason, in Optuna and in MLflow, and
the study goes on; a pruned trial is recorded as pruned.
"""

from __future__ import annotations

import gc
import math
import traceback
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from ..config import SweepConfig
from ..data.dataset import Dataset
from ..embeddings import Embedding
from ..errors import TitkError
from ..evaluate.suite import load_suite
from ..tracking.manifest import manifest
from .space import apply_settings, suggest_settings, suggest_subset
from .storage import worker_identity

# Per-image columns of the score table that stand for summary metrics (for the Wilcoxon pruner).
PER_IMAGE = {"identity.similarity": "id_sim", "identity.similarity_pairwise": "id_sim_pairwise", "clip_t": "clip_t", "clip_i": "clip_i"}


class TrialFailed(Exception):
    """A trial that could not finish; its reason is on the trial and the MLflow run. The study goes on."""


def metric(summary: dict, name: str, missing: float) -> float:
    value = summary.get(name, float("nan"))
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def objective_value(summary: dict, config: SweepConfig) -> float | tuple[float, ...]:
    o = config.objective
    if o.pareto:
        return tuple(metric(summary, m, o.missing_value) for m in o.pareto)
    return sum(w * metric(summary, m, o.missing_value) for m, w in o.metrics.items())


@dataclass
class Worker:
    """What a worker holds for all its trials."""

    config: SweepConfig
    bundle: object
    dataset: Dataset
    evaluator: object
    tracker: object
    parent_run: str
    workdir: Path
    arch: object
    show_progress: bool = True

    def __post_init__(self):
        self.intermediate = load_suite(self.config.objective.intermediate_suite)
        self.names = [r.path.name for r in self.dataset.records]

    # ------------------------------------------------------------------------------------------ the trial

    def __call__(self, trial: optuna.Trial):
        from ..train.plan import make_plan

        for name, value in worker_identity().items():
            trial.set_user_attr(name, value)
        settings = suggest_settings(trial, self.config)
        chosen = suggest_subset(trial, self.config, self.names)
        run_id = self.tracker.start_trial(self.parent_run, trial.number, {"optuna.study": self.config.study})
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            if not chosen or (self.config.subset.include_flags and len(chosen) < self.config.subset.min_images):
                trial.set_constraint("min_images", self.config.subset.min_images - len(chosen))
                raise TrialFailed(f"only {len(chosen)} images chosen; at least {self.config.subset.min_images} are needed")
            subset = self.dataset.subset(chosen)
            folder = self.workdir / "trials" / f"{trial.number:04d}"
            config = apply_settings(self.config.base, settings, output={"dir": str(folder), "preview": {"every": 0}})
            plan = make_plan(config, subset, self.arch)
            if self.config.bs_ga_within_dataset:
                trial.set_constraint("bs_ga", config.train.batch_size * config.train.grad_accum - len(subset))
            self._log_start(trial, run_id, settings, config, plan, chosen)
            values, summaries, personality = [], [], None
            for repeat in range(self.config.repeats):
                run_config = apply_settings(config, {"train.seed": config.train.seed + repeat}, output={"dir": str(folder / f"seed-{repeat}")})
                card = self._train_and_score(trial, run_id, run_config, subset, plan, prune=repeat == 0)
                values.append(objective_value(card.summary, self.config))
                summaries.append({k: v for k, v in card.summary.items() if isinstance(v, float) and v == v})
                personality = _add_histograms(personality, card.extras.get("personality"))
            value = _mean(values)
            # What analysis reads back: the mean summary over seeds, each seed's objective, the histograms.
            trial.set_user_attr("summary", {k: sum(s.get(k, 0.0) for s in summaries) / len(summaries) for k in summaries[0]})
            trial.set_user_attr("values_per_seed", [list(v) if isinstance(v, tuple) else v for v in values])
            if personality:
                trial.set_user_attr("personality", personality)
            self._constraints(trial, run_id)
            self.tracker.log_metrics(run_id, {"objective": value} if not isinstance(value, tuple) else {f"objective_{i}": v for i, v in enumerate(value)}, plan.stop_step)
            self.tracker.finish(run_id, "COMPLETE")
            return value
        except optuna.TrialPruned:
            self.tracker.finish(run_id, "PRUNED", "pruned by the median/Wilcoxon rule on intermediate scores")
            raise
        except KeyboardInterrupt:
            self.tracker.finish(run_id, "INTERRUPTED", "interrupted (Ctrl-C); the study resumes from its storage")
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except Exception as exc:  # NaN loss, out of memory, a bad setting, a bug: the trial fails, the study goes on
            reason = _reason(exc)
            trial.set_user_attr("fail_reason", reason)
            if not isinstance(exc, (TrialFailed, TitkError, torch.cuda.OutOfMemoryError)):
                folder = self.workdir / "trials" / f"{trial.number:04d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "error.txt").write_text(traceback.format_exc())
                self.tracker.log_files(run_id, [folder / "error.txt"], "error")
            self.tracker.finish(run_id, "FAIL", reason)
            raise TrialFailed(reason) from None
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------ parts

    def _log_start(self, trial, run_id, settings, config, plan, chosen):
        params = {f"search.{k}": v for k, v in settings.items()}
        flat = config.model_dump(mode="json")
        for section in ("embedding", "data", "train"):
            params.update({f"{section}.{k}": v for k, v in flat[section].items() if k != "path"})
        params.update({
            "effective.batch_size": plan.batch_size_eff, "effective.grad_accum": plan.grad_accum_eff,
            "effective.steps": plan.stop_step, "effective.epochs": plan.epochs, "effective.image_views": plan.image_views,
            "effective.updates_per_epoch": plan.updates_per_pass, "effective.loss_divisor": plan.loss_divisor,
            "effective.weight_decay": plan.weight_decay, "effective.clip": f"{plan.clip_mode} {plan.clip_threshold}",
            "effective.lr_segments": plan.lr_segments, "effective.total_tflops": plan.total_tflops,
            "subset.size": len(chosen), "repeats": self.config.repeats,
        })
        self.tracker.log_params(run_id, params)
        self.tracker.log_tags(run_id, {"titk.seed": config.train.seed, "titk.plan_warnings": plan.warnings})
        self.tracker.log_dataset(run_id, manifest(self.dataset, chosen), f"{self.config.study}-trial-{trial.number}", str(self.dataset.root))

    def _train_and_score(self, trial, run_id, config, subset, plan, prune: bool):
        from ..train.loop import train

        o = self.config.objective
        every = o.eval_every if o.eval_every is not None else max(1, plan.stop_step // 4)
        pending: dict[str, list] = {"loss": [], "lr": []}

        def on_event(event, info):
            if event != "update":
                return
            pending["loss"].append(info["loss"])
            pending["lr"].append(info["lr"])
            step = info["step"]
            if not (every and step % every == 0 and step + every <= plan.stop_step):  # the final evaluation covers the last stretch
                return
            emb = Embedding(config.embedding.name, {k: v.detach().clone() for k, v in info["vectors"].items()}, step=step)
            card = self.evaluator.evaluate(emb, name=config.embedding.name, suite=self.intermediate)
            self.tracker.log_scorecard(run_id, card, step, "intermediate")
            self.tracker.log_metrics(run_id, {"train.loss": _avg(pending["loss"]), "train.lr": pending["lr"][-1]}, step)
            pending["loss"].clear()
            if prune and not o.pareto and o.pruner == "median":
                trial.report(objective_value(card.summary, self.config), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

        result = train(config, dataset=subset, bundle=self.bundle, show_progress=self.show_progress,
                       latent_cache=self.workdir / "cache" / "latents", callback=on_event)
        if pending["loss"]:
            self.tracker.log_metrics(run_id, {"train.loss": _avg(pending["loss"]), "train.lr": pending["lr"][-1]}, result.steps_done)
        card = self._final_score(trial, run_id, result.embedding, config.embedding.name, prune)
        self.tracker.log_scorecard(run_id, card, result.steps_done, "final")
        self.tracker.log_files(run_id, result.files, "embeddings")
        self.tracker.log_files(run_id, [result.run_dir / "train_log.csv", result.run_dir / "plan.json"], f"train/seed-{config.train.seed}")
        value = objective_value(card.summary, self.config)
        if self.config.repeats > 1 and not isinstance(value, tuple):
            self.tracker.log_metrics(run_id, {f"seed.{config.train.seed}.objective": value}, result.steps_done)
        return card

    def _final_score(self, trial, run_id, embedding, name, prune: bool):
        """The final evaluation; with the Wilcoxon pruner it goes prompt by prompt, each image an instance."""
        o = self.config.objective
        suite = self.evaluator.suite
        if not (prune and o.pruner == "wilcoxon" and not o.pareto):
            return self.evaluator.evaluate(embedding, name=name)
        samples = []
        for prompt in range(len(suite.spec.prompts)):
            part = self.evaluator.samples(embedding, name, suite.only(prompt))
            rows = self.evaluator.score(part, embedding, suite.only(prompt), name).table
            for j, row in enumerate(rows.itertuples(index=False)):
                value = sum(w * _row_value(row, m, o.missing_value) for m, w in o.metrics.items())
                trial.report(value, len(samples) + j)  # the instance index: same prompt and seed in every trial
            samples += part
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {len(samples)} evaluation images")
        return self.evaluator.score(samples, embedding, suite, name)

    def _constraints(self, trial, run_id):
        summary = trial.user_attrs.get("summary", {})
        for name, floor in self.config.objective.floors.items():
            trial.set_constraint(f"floor:{name}", floor - metric(summary, name, self.config.objective.missing_value))


def _row_value(row, name: str, missing: float) -> float:
    column = PER_IMAGE.get(name)
    if column is None:
        raise TitkError(f"objective.metrics: {name} has no per-image value; the Wilcoxon pruner needs one of {', '.join(PER_IMAGE)}")
    value = getattr(row, column, float("nan"))
    return missing if value is None or value != value else float(value)


def _add_histograms(total: dict | None, hists: dict | None) -> dict | None:
    """Label counts summed over seeds."""
    if not hists:
        return total
    if total is None:
        return {name: dict(h) for name, h in hists.items()}
    for name, h in hists.items():
        total[name]["generated"] = [a + b for a, b in zip(total[name]["generated"], h["generated"])]
    return total


def _mean(values: list):
    if isinstance(values[0], tuple):
        return tuple(sum(v[i] for v in values) / len(values) for i in range(len(values[0])))
    return sum(values) / len(values)


def _avg(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory: lower the batch size or image size, or enable gradient checkpointing"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (TrialFailed, TitkError)):
        return text.splitlines()[0]
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}"
