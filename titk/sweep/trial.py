"""One trial, top to bottom: suggest settings and images, plan once, train and score each seed, aggregate,
record. The worker's model, latent cache and evaluator are shared by every trial it runs.

A trial that fails (NaN loss, out of memory, any error) is recorded as failed with its reason, in Optuna
and in MLflow, and the study goes on; a pruned trial is recorded as pruned.
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import optuna
import torch

from ..config import SweepConfig, TrainConfig
from ..data.dataset import Dataset
from ..devices import release_gpu_memory
from ..errors import DiskFull, TitkError, disk_full
from ..hashing import sha256_bytes
from ..tracking.manifest import manifest
from ..train import loop as training
from ..train.loop import Job, TrainResult
from ..train.plan import TrainPlan, make_plan
from .packing import run_together
from .pruning import Pruning
from .scoring import add_histograms, aggregate_seeds, floor_constraints, objective_value
from .space import apply_settings, check_composition, suggest_settings, suggest_subset
from .storage import worker_identity


class TrialFailed(Exception):
    """A trial that could not finish; its reason is on the trial and the MLflow run. The study goes on."""


# Reasons after which a trial is run again with the same settings (nothing about them was wrong).
RETRY_REASONS = ("interrupted", "worker died (its process is gone)", "disk full", "journal record torn")


class TrialObjective:
    """The function Optuna calls for each trial of this worker."""

    def __init__(self, config: SweepConfig, bundle, dataset: Dataset, evaluator, tracker, parent_run: str, workdir: Path,
                 arch, sampler_seed: int, show_progress: bool = True, on_start=None):
        self.config, self.bundle, self.dataset, self.evaluator = config, bundle, dataset, evaluator
        self.tracker, self.parent_run, self.workdir, self.arch = tracker, parent_run, workdir, arch
        self.sampler_seed, self.show_progress, self.on_start = sampler_seed, show_progress, on_start
        self.pruning = Pruning(config.objective)
        # Intermediate scores come from part of the final suite (same prompts, seeds and sampling), so they
        # are on the final scores' scale and the pruner compares like with like.
        part = config.objective.intermediate
        self.intermediate = evaluator.suite.subset(part.seeds, part.per_kind)
        self.names = [r.path.name for r in dataset.records]
        self._untrained: dict[str, dict] = {}  # personality histograms of each untrained start, by its vectors
        self.labels = check_composition(config, evaluator.image_attributes(), evaluator.label_sets)  # subset.compose's

    def __call__(self, trial: optuna.Trial):
        """The trial run alone (Optuna's optimize calls this); packing.py runs several at once."""
        ((state, value),) = run_together([self.run(trial)], self.bundle, self.show_progress)
        if state != optuna.trial.TrialState.COMPLETE:
            raise value  # pruned, failed or interrupted, as the body raised it
        return value

    def run(self, trial: optuna.Trial) -> Generator[Job, TrainResult, float | tuple]:
        """The trial, top to bottom. Each training is yielded as a Job for the caller to run (alone, or packed
        with other trials' jobs) and its result, or its exception, comes back here."""
        for name, value in worker_identity().items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("titk.sampler_seed", self.sampler_seed)  # with the study's seed, what reproduces it
        settings = suggest_settings(trial, self.config)
        chosen = suggest_subset(trial, self.config, self.names, self.labels)
        twin = None if self.config.retrain_duplicates else measured_twin(trial)
        if twin is not None:  # another worker, or this one before a restart, already trained these settings
            trial.set_user_attr("duplicate_of", twin.number)
            for name, value in twin.constraints.items():
                trial.set_constraint(name, value)
            return twin.values if len(twin.values) > 1 else twin.values[0]
        if self.on_start:
            self.on_start(trial, settings, len(chosen))
        run_id = self.tracker.start_trial(self.parent_run, trial.number, {"optuna.study": self.config.study})
        trial.set_user_attr("mlflow_run_id", run_id)
        folder = self.workdir / "trials" / f"{trial.number:04d}"
        try:
            # 1. What this trial trains: settings, images and plan, computed once. The baseline runs several
            # seeds: their spread is the study's seed noise.
            baseline = bool(trial.user_attrs.get("titk.baseline"))
            repeats = max(self.config.repeats, self.config.baseline_seeds) if baseline else self.config.repeats
            subset_size, min_images = len(chosen), self.config.subset.min_images
            if not chosen or (self.config.subset.include_flags and subset_size < min_images):
                trial.set_constraint("min_images", min_images - subset_size)
                raise TrialFailed(f"only {subset_size} images chosen; at least {min_images} are needed")
            subset = self.dataset.subset(chosen)
            config = apply_settings(self.config.base, settings, output={"dir": str(folder), "preview": {"every": 0}})
            plan = make_plan(config, subset, self.arch)
            if self.config.bs_ga_within_dataset:
                trial.set_constraint("bs_ga", config.train.batch_size * config.train.grad_accum - len(subset))
            self._log_start(trial, run_id, settings, config, plan, chosen, repeats)

            # 2. Each seed trained and scored; only the first may be pruned (never the baseline's).
            cards = []
            for repeat in range(repeats):
                seed_config = apply_settings(config, {"train.seed": config.train.seed + repeat}, output={"dir": str(folder / f"seed-{repeat}")})
                card = yield from self._train_and_score(trial, run_id, seed_config, subset, plan, repeats, prune=repeat == 0 and not baseline)
                cards.append(card)

            # 3. One aggregate feeds the objective, the floors and what analysis reads back.
            result = aggregate_seeds([card.summary for card in cards])
            value = objective_value(result.mean, self.config.objective)
            trial.set_user_attr("summary", {k: v for k, v in result.mean.items() if v == v})
            trial.set_user_attr("values_per_seed", [_plain(objective_value(card.summary, self.config.objective)) for card in cards])
            personality = None
            for card in cards:
                personality = add_histograms(personality, card.extras.get("personality"))
            if personality:
                trial.set_user_attr("personality", personality)
            for name, constraint in floor_constraints(result.mean, self.config.objective).items():
                trial.set_constraint(name, constraint)
            objective = {"objective": value} if not isinstance(value, tuple) else {f"objective_{i}": v for i, v in enumerate(value)}
            self.tracker.log_metrics(run_id, objective, plan.stop_step)
            self._close(trial, run_id, "COMPLETE")
            return value
        except optuna.TrialPruned:
            self._close(trial, run_id, "PRUNED", f"pruned by the {self.pruning.rule} rule")
            raise
        except KeyboardInterrupt:
            with _no_second_interrupt():  # a second Ctrl-C must not leave the run open and the trial without a reason
                trial.set_user_attr("fail_reason", "interrupted")
                self._close(trial, run_id, "INTERRUPTED", "interrupted (Ctrl-C); the study resumes from its storage")
            raise
        except Exception as exc:  # NaN loss, out of memory, a bad setting, a bug: the trial fails, the study goes on
            if disk_full(exc):  # every later trial would fail the same way: stop the sweep, retry this trial on resume
                full = DiskFull.from_error(exc)
                try:
                    trial.set_user_attr("fail_reason", "disk full")
                    self._close(trial, run_id, "FAIL", str(full))
                except Exception:  # noqa: BLE001  the stores may be on the full disk too: the next start closes the trial and its run
                    pass
                raise full from None
            reason = _reason(exc)
            trial.set_user_attr("fail_reason", reason)
            if not isinstance(exc, (TrialFailed, TitkError, torch.cuda.OutOfMemoryError)):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "error.txt").write_text(traceback.format_exc())
                self.tracker.log_files(run_id, [folder / "error.txt"], "error")
            self._close(trial, run_id, "FAIL", reason)
            raise TrialFailed(reason) from None
        finally:
            release_gpu_memory()

    # ------------------------------------------------------------------------------------------ parts

    def _close(self, trial, run_id: str, state: str, reason: str | None = None) -> None:
        """End the trial's MLflow run and note on the trial that it is ended (recovery closes the others)."""
        self.tracker.finish(run_id, state, reason)
        trial.set_user_attr("titk.run_closed", True)

    def _log_start(self, trial, run_id, settings: dict, config: TrainConfig, plan: TrainPlan, chosen: list[int], repeats: int) -> None:
        params = {f"search.{k}": v for k, v in settings.items()}
        flat = config.model_dump(mode="json")
        for section in ("model", "embedding", "data", "train"):
            params.update({f"{section}.{k}": v for k, v in flat[section].items() if k != "path"})
        params.update({"model.resolved_dtype": str(self.bundle.dtype).removeprefix("torch."), "data.path": str(self.dataset.root)})
        params.update({f"evaluation.{k}": v for k, v in self.config.evaluation.model_dump(mode="json").items()})
        params.update({
            "effective.batch_size": plan.batch_size_eff, "effective.grad_accum": plan.grad_accum_eff,
            "effective.steps": plan.stop_step, "effective.epochs": plan.epochs, "effective.image_views": plan.image_views,
            "effective.updates_per_epoch": plan.updates_per_pass, "effective.loss_divisor": plan.loss_divisor,
            "effective.weight_decay": plan.weight_decay, "effective.clip": f"{plan.clip_mode} {plan.clip_threshold}",
            "effective.lr_segments": plan.lr_segments, "effective.total_tflops": plan.total_tflops,
            "subset.size": len(chosen), "repeats": repeats,
        })
        self.tracker.log_params(run_id, params)
        self.tracker.log_tags(run_id, {"titk.seed": config.train.seed, "titk.plan_warnings": plan.warnings})
        self.tracker.log_dataset(run_id, manifest(self.dataset, chosen), f"{self.config.study}-trial-{trial.number}", str(self.dataset.root))

    def _train_and_score(self, trial, run_id: str, config: TrainConfig, subset: Dataset, plan: TrainPlan, repeats: int, prune: bool):
        every = self.config.objective.eval_every
        every = max(1, plan.stop_step // 4) if every is None else every
        pending: dict[str, list] = {"loss": [], "lr": []}

        def on_event(event: training.TrainEvent) -> None:
            if event.kind != "update":
                return
            pending["loss"].append(event.loss)
            pending["lr"].append(event.lr)
            if event.validation_loss is not None:  # at the intermediate steps, beside the intermediate scores
                self.tracker.log_metrics(run_id, {"validation.loss": event.validation_loss}, event.step)
            if not (every and event.step % every == 0 and event.step + every <= plan.stop_step):
                return  # the final evaluation covers the last stretch
            card = self.evaluator.evaluate(event.embedding, name=config.embedding.name, suite=self.intermediate)
            self.tracker.log_scorecard(run_id, card, event.step, "intermediate")
            self._log_loss(run_id, pending, event.step)
            value = objective_value(card.summary, self.config.objective)
            if not isinstance(value, tuple):  # on the final objective's scale: what the pruner compares
                self.tracker.log_metrics(run_id, {"intermediate/objective": value}, event.step)
            if prune and self.pruning.on_intermediate:
                self.pruning.check_intermediate(trial, value, event.step)

        result = yield Job(config, plan, subset, latent_cache=self.workdir / "cache" / "latents", callback=on_event, validate_every=every)
        if pending["loss"]:
            self._log_loss(run_id, pending, result.steps_done)
        if result.peak_memory is not None:  # on a GPU: this training's, or its packed group's when packed
            self.tracker.log_metrics(run_id, {"train.peak_memory_gib": result.peak_memory / 2**30}, result.steps_done)
        card = self._final_score(trial, config, result.embedding, prune, [r.path.name for r in subset.records])
        grid = "samples.png" if repeats == 1 else f"samples-seed-{config.train.seed}.png"
        self.tracker.log_scorecard(run_id, card, result.steps_done, "final", grid_file=grid)
        self.tracker.log_files(run_id, result.files, "embeddings")
        self.tracker.log_files(run_id, [result.run_dir / "train_log.csv", result.run_dir / "plan.json"], f"train/seed-{config.train.seed}")
        if repeats > 1 and not self.config.objective.pareto:
            self.tracker.log_metrics(run_id, {f"seed.{config.train.seed}.objective": objective_value(card.summary, self.config.objective)}, result.steps_done)
        return card

    def _log_loss(self, run_id: str, pending: dict, step: int) -> None:
        self.tracker.log_metrics(run_id, {"train.loss": sum(pending["loss"]) / len(pending["loss"]), "train.lr": pending["lr"][-1]}, step)
        pending["loss"].clear()

    def _final_score(self, trial, config: TrainConfig, embedding, prune: bool, trained_on: list[str]):
        """The final evaluation; under the Wilcoxon rule it goes prompt by prompt so that it can stop early.
        Personality compares the TI with the images it trained on (`trained_on`), not the whole dataset."""
        suite, name = self.evaluator.suite, config.embedding.name
        untrained = self._untrained_personality(config)
        if not (prune and self.pruning.on_final_images):
            with _progress(self.show_progress, f"scoring {name} on the {Path(suite.name).stem} suite") as on_progress:
                return self.evaluator.evaluate(embedding, name=name, on_progress=on_progress, untrained=untrained, trained_on=trained_on)
        samples = []
        for prompt in range(len(suite.spec.prompts)):
            part = self.evaluator.samples(embedding, name, suite.only(prompt))
            table = self.evaluator.score(part, embedding, suite.only(prompt), name).table
            self.pruning.check_images(trial, self.pruning.image_values(table), len(samples))
            samples += part
        return self.evaluator.score(samples, embedding, suite, name, untrained=untrained, probes=self.evaluator.probes(embedding, name),
                                    trained_on=trained_on)

    def _untrained_personality(self, config: TrainConfig) -> dict | None:
        """The personality histograms of what this trial's training starts from (the init text's vectors or
        the start file), on the personality probes: the baseline against which a TI's shift is
        measured, since an untrained embedding has tendencies of its own. Generated once per distinct start
        in this worker (the vectors' bytes are the key: searched vector counts give several)."""
        if self.evaluator.personality_scorer is None:
            return None
        start = training.starting_embedding(config, self.bundle)
        key = sha256_bytes(b"".join(start.vectors[k].detach().cpu().numpy().tobytes() for k in sorted(start.vectors)))
        if key not in self._untrained:
            self._untrained[key] = self.evaluator.personality(start, config.embedding.name)
        return self._untrained[key]


def measured_twin(trial: optuna.Trial):
    """A complete, trained trial of the study with exactly these settings and images, or None."""
    subset = trial.user_attrs.get("subset")
    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.params == trial.params and other.user_attrs.get("subset") == subset and "duplicate_of" not in other.user_attrs:
            return other
    return None


@contextmanager
def _progress(show: bool, label: str):
    """A bar for a long phase, fed (done, total), left on screen as the training bars are; None when bars
    are off."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def _no_second_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory: lower the batch size or image size, or enable gradient checkpointing"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (TrialFailed, TitkError)):
        return text.splitlines()[0]
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}"
