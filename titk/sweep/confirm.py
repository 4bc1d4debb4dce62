"""Confirmation: after the search, are the winners really better than the baseline?

A search picks its best trials from one seed each, so their scores are biased upwards (the winner's curse).
Confirmation trains the top trials' settings (with the images they trained on) and the baseline again, on
fresh training seeds, scores each on the full final suite, and compares each candidate with the baseline
paired: seed s of a candidate against seed s of the baseline, scored on the same prompts and sampling seeds.
The difference's interval is a t-interval over the seeds (the seed is the unit of replication; prompts are
averaged within it), Bonferroni-adjusted over the candidates. The verdict and one plain sentence go to the
study (user attribute `titk.confirmation`), `confirmation.json` in the work directory, the MLflow study run,
the CLI summary and the report.

Each (setting, seed) result is kept in `confirm/results.json` as it finishes, so an interrupted confirmation
resumes where it stopped and a repeated one costs nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import optuna

from ..config import SweepConfig
from ..files import atomic_path
from ..stats import Interval, mean_interval, t_p_value
from .scoring import objective_names, objective_value
from .space import apply_settings
from .trials import measured, seed_noise, trials_frame

SEED_OFFSET = 1000  # confirmation's training seeds: apart from the search's (train.seed + repeat)
MIN_SEEDS, MAX_SEEDS, UNKNOWN_NOISE_SEEDS = 3, 10, 5
ATTR = "titk.confirmation"

_SHORT = {"learning_rate": "lr {}", "vectors": "{} vectors", "max_steps": "{} steps", "epochs": "{} epochs",
          "batch_size": "batch {}", "grad_accum": "GA {}"}


@dataclass
class Setting:
    """One thing confirmed: its settings and images, and where it came from."""

    key: str  # "baseline" or "trial-N": its folder and its entries in results.json
    label: str
    trial: int | None
    params: dict
    subset: list[str] | None


def describe(params: dict) -> str:
    """`lr 0.004, 8 vectors, 300 steps` for the searched settings of a trial."""
    parts = []
    for name, value in params.items():
        short = name.rsplit(".", 1)[-1]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(_SHORT.get(short, short.replace("_", " ") + " {}").format(shown))
    return ", ".join(parts) or "the base settings"


def default_seeds(noise: Interval | None, min_effect: float, level: float) -> int:
    """Seeds per setting so that a paired difference of `min_effect` stands out of the interval, from the
    baseline's seed-to-seed spread (a difference of two seeds spreads √2 times as much when the pairing
    does not help); five when the spread is unknown."""
    from scipy import stats

    if noise is None or not math.isfinite(noise.sd):
        return UNKNOWN_NOISE_SEEDS
    sd = math.sqrt(2) * noise.sd
    for n in range(MIN_SEEDS, MAX_SEEDS + 1):
        if stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) <= min_effect:
            return n
    return MAX_SEEDS


def choose(config: SweepConfig, study: optuna.Study, top: int, trials: list[int] | None = None) -> tuple[Setting, list[Setting]]:
    """The baseline (its trial's settings and images, or the base settings on every image) and the
    candidates: the given trials, or the `top` best measured feasible trials that are not the baseline."""
    table = trials_frame(study)
    done = measured(table)
    base_rows = done[done["baseline"]] if "baseline" in done else done.head(0)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    if not base_rows.empty:
        number = int(base_rows.iloc[0]["trial"])
        t = by_number[number]
        entry = t.user_attrs.get("enqueued")
        kind = f"the {Path(entry).stem} recipe" if isinstance(entry, str) and entry.endswith((".yaml", ".yml")) else "the baseline"
        baseline = Setting("baseline", f"{kind} ({describe(t.params)})", number, dict(t.params), t.user_attrs.get("subset"))
    else:
        baseline = Setting("baseline", "the base settings", None, {}, None)
    if trials is not None:
        missing = [n for n in trials if n not in set(done["trial"])]
        if missing:
            from ..errors import TitkError

            raise TitkError(f"--trial: {', '.join(map(str, missing))} not a complete, trained trial of study {study.study_name!r}")
        numbers = list(trials)
    else:
        rest = done[~done["trial"].eq(baseline.trial)] if baseline.trial is not None else done
        rest = rest.sort_values(["feasible", "value"], ascending=[False, False])
        numbers = []
        for number in rest["trial"]:
            t = by_number[int(number)]
            if t.params == baseline.params and t.user_attrs.get("subset") == baseline.subset:
                continue
            numbers.append(int(number))
            if len(numbers) == top:
                break
    candidates = [Setting(f"trial-{n}", describe(by_number[n].params), n, dict(by_number[n].params), by_number[n].user_attrs.get("subset"))
                  for n in numbers]
    return baseline, candidates


def compare(base: list[float], cand: list[float], level: float) -> dict:
    """The paired comparison of a candidate's per-seed objective with the baseline's at the same seeds."""
    diffs = [c - b for c, b in zip(cand, base)]
    interval = mean_interval(diffs, level)
    verdict = "better" if interval.low > 0 else "worse" if interval.high < 0 else "no difference"
    return {"values": cand, "difference": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
            "p_value": t_p_value(diffs), "verdict": verdict}


def sentence(record: dict) -> str:
    """The decision in one plain sentence."""
    base, n, objective = record["baseline"]["label"], len(record["seeds"]), record["objective"]
    level = f"{record['level'] * 100:.3g} % CI"
    best = record.get("best")
    if best is not None:
        return (f"{best['label']} (trial {best['trial']}) beats {base} by {best['difference']:+.3f} {objective} "
                f"({level} {best['ci_low']:+.3f} to {best['ci_high']:+.3f}, {n} seeds)")
    if not record["candidates"]:
        return f"nothing to confirm: no complete trial other than {base}"
    top = max(record["candidates"], key=lambda c: c["difference"])
    return (f"no setting beat {base} beyond seed noise: the best, {top['label']} (trial {top['trial']}), differs by "
            f"{top['difference']:+.3f} {objective} ({level} {top['ci_low']:+.3f} to {top['ci_high']:+.3f}, {n} seeds)")


def next_step(record: dict, config: SweepConfig, noise: Interval | None) -> str:
    """What to try next, from the verdicts and the space."""
    best = record.get("best")
    if best is not None:
        edges = []
        for key, value in best["params"].items():
            spec = config.space.get(key)
            if spec is not None and spec.choice is None and isinstance(value, (int, float)) and value in (spec.low, spec.high):
                edges.append(key)
        if edges:
            return f"the confirmed best sits at the edge of {', '.join(edges)}: widen that range and search again"
        return "use the confirmed settings; a narrower search around them can refine them"
    spread = f" (seed-to-seed spread {noise.sd:.3f})" if noise is not None and math.isfinite(noise.sd) else ""
    return (f"differences this small are within seed noise{spread}: run more trials, widen the space, or confirm with more "
            f"seeds (`--seeds`); a smaller min_effect needs more seeds")


class Confirmation:
    """Trains and scores each (setting, seed) once, keeping every result as it finishes."""

    def __init__(self, config: SweepConfig, workdir: Path, bundle, dataset, evaluator, arch, show_progress: bool = True, on_run=None):
        self.config, self.workdir, self.bundle, self.dataset = config, Path(workdir), bundle, dataset
        self.evaluator, self.arch, self.show_progress, self.on_run = evaluator, arch, show_progress, on_run
        self.folder = self.workdir / "confirm"
        self.results_path = self.folder / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}

    def _identity(self, setting: Setting, seed: int) -> str:
        """What a stored result must match to be reused: settings, images, seed, suite (as sampled) and objective."""
        sampling = self.evaluator.sampling(self.evaluator.suite).model_dump(mode="json")
        return json.dumps([setting.params, setting.subset, seed, self.evaluator.suite.sha256, sampling,
                           self.config.base.model_dump(mode="json"), self.config.objective.model_dump(mode="json")], sort_keys=True, default=str)

    def run_seeds(self, setting: Setting, seeds: list[int]) -> list[dict]:
        """Each seed's result for `setting`: stored ones reused, the others trained `pack` at a time (packed
        trials: each as it would be alone) and each kept as soon as its group is scored."""
        from ..train import loop as training
        from ..train.plan import make_plan

        entries = {seed: self._stored(setting, seed) for seed in seeds}
        todo = [seed for seed in seeds if entries[seed] is None]
        names = [r.path.name for r in self.dataset.records]
        chosen = [names.index(n) for n in setting.subset if n in names] if setting.subset else list(range(len(names)))
        subset = self.dataset.subset(chosen)
        pack = max(1, self.config.pack)
        for group in (todo[i:i + pack] for i in range(0, len(todo), pack)):
            jobs = []
            for seed in group:
                if self.on_run:
                    self.on_run(setting, seed)
                config = apply_settings(self.config.base, {**setting.params, "train.seed": seed},
                                        output={"dir": str(self._folder(setting, seed)), "preview": {"every": 0}, "save_every": 0})
                jobs.append(training.Job(config, make_plan(config, subset, self.arch), subset,
                                         latent_cache=self.workdir / "cache" / "latents"))
            results = training.train_together(jobs, bundle=self.bundle, show_progress=self.show_progress)
            for seed, job, result in zip(group, jobs, results):  # every finished seed kept before a failure is raised
                if not isinstance(result, BaseException):
                    entries[seed] = self._score(setting, seed, job.config, subset, result)
            failed = [result for result in results if isinstance(result, BaseException)]
            if failed:
                raise failed[0]
        return [entries[seed] for seed in seeds]

    @staticmethod
    def _name(setting: Setting, seed: int) -> str:
        """Its entry in results.json and its folder under confirm/."""
        return f"{setting.key}/seed-{seed}"

    def _folder(self, setting: Setting, seed: int) -> Path:
        return self.folder / self._name(setting, seed)

    def _stored(self, setting: Setting, seed: int) -> dict | None:
        stored = self.results.get(self._name(setting, seed))
        return stored if stored is not None and stored.get("identity") == self._identity(setting, seed) else None

    def _score(self, setting: Setting, seed: int, config, subset, result) -> dict:
        out = self._folder(setting, seed)
        card = self.evaluator.evaluate(result.embedding, name=config.embedding.name, trained_on=[r.path.name for r in subset.records])
        card.grid.save(out / "samples.png")
        summary = {k: float(v) for k, v in card.summary.items() if isinstance(v, (int, float)) and v == v}
        value = objective_value(card.summary, self.config.objective)
        entry = {"identity": self._identity(setting, seed), "objective": value, "summary": summary,
                 "files": [str(f) for f in result.files], "grid": str(out / "samples.png")}
        self.results[self._name(setting, seed)] = entry
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.results_path) as tmp:
            tmp.write_text(json.dumps(self.results, indent=1))
        return entry


def confirm(config: SweepConfig, study: optuna.Study, *, workdir: Path, bundle, dataset, evaluator, arch, tracker=None,
            parent: str | None = None, top: int | None = None, seeds: int | None = None, trials: list[int] | None = None,
            show_progress: bool = True, on_run=None) -> dict:
    """Confirm the best trials against the baseline; returns the record (also stored; see the module doc)."""
    settings = config.confirm
    top = settings.top if top is None else top
    noise = seed_noise(trials_frame(study), settings.level)
    baseline, candidates = choose(config, study, top, trials)
    level = 1 - (1 - settings.level) / max(1, len(candidates))  # Bonferroni over the candidates
    n = seeds or settings.seeds or default_seeds(noise, settings.min_effect, level)
    seed_list = [config.base.train.seed + SEED_OFFSET + i for i in range(n)]
    runner = Confirmation(config, workdir, bundle, dataset, evaluator, arch, show_progress, on_run)
    base_values = [e["objective"] for e in runner.run_seeds(baseline, seed_list)] if candidates else []  # nothing to compare: nothing trained
    record = {
        "objective": objective_names(config)[0], "level": level, "seeds": seed_list, "suite": evaluator.suite.name,
        "min_effect": settings.min_effect, "seed_noise_sd": noise.sd if noise is not None else None,
        "baseline": {"label": baseline.label, "trial": baseline.trial, "params": baseline.params, "subset": baseline.subset, "values": base_values},
        "candidates": [],
    }
    for cand in candidates:
        values = [e["objective"] for e in runner.run_seeds(cand, seed_list)]
        record["candidates"].append({"trial": cand.trial, "label": cand.label, "params": cand.params, "subset": cand.subset,
                                     **compare(base_values, values, level)})
    better = [c for c in record["candidates"] if c["verdict"] == "better"]
    record["best"] = max(better, key=lambda c: c["difference"]) if better else None
    record["sentence"] = sentence(record)
    record["next"] = next_step(record, config, noise)
    _store(record, study, Path(workdir), tracker, parent, runner)
    return record


def _store(record: dict, study: optuna.Study, workdir: Path, tracker, parent: str | None, runner: Confirmation) -> None:
    clean = _plain(record)
    with atomic_path(workdir / "confirmation.json") as tmp:
        tmp.write_text(json.dumps(clean, indent=2))
    study.set_user_attr(ATTR, clean)
    if tracker is None or parent is None:
        return
    tracker.log_tags(parent, {"titk.decision": record["sentence"], "titk.next": record["next"]})
    metrics = {"confirm.seeds": len(record["seeds"])}
    if record["best"] is not None:
        metrics.update({"confirm.difference": record["best"]["difference"], "confirm.ci_low": record["best"]["ci_low"],
                        "confirm.ci_high": record["best"]["ci_high"]})
    tracker.log_metrics(parent, metrics, 0)
    tracker.client.log_dict(parent, clean, "confirmation.json")
    for entry in [record["baseline"], *record["candidates"]]:
        key = "baseline" if entry is record["baseline"] else f"trial-{entry['trial']}"
        title = "confirm: baseline" if key == "baseline" else f"confirm: trial {entry['trial']}"
        run_id = tracker.start_child(parent, title, {"titk.role": "confirmation", "titk.confirms": key})
        tracker.log_params(run_id, {f"search.{k}": v for k, v in entry["params"].items()})
        for i, (seed, value) in enumerate(zip(record["seeds"], entry["values"])):
            tracker.log_metrics(run_id, {"confirm.objective": value}, i)
            stored = runner.results.get(f"{key}/seed-{seed}", {})
            if i == 0 and stored.get("grid") and Path(stored["grid"]).is_file():
                tracker.log_files(run_id, [Path(stored["grid"])], "")
        mean = mean_interval(entry["values"], record["level"])
        tracker.log_metrics(run_id, {"confirm.objective_mean": mean.mean, **({"confirm.difference": entry["difference"]} if "difference" in entry else {})}, len(entry["values"]))
        tracker.finish(run_id, "COMPLETE")


def _plain(value):
    """JSON without NaN (no interval is null) and without tuples or numpy numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float) or hasattr(value, "__float__"):
        value = float(value)
        return value if math.isfinite(value) else None
    return str(value)


def load_confirmation(study: optuna.Study) -> dict | None:
    """The study's confirmation record (see the module doc), or None before one ran."""
    return study.user_attrs.get(ATTR)
