"""What a study decided, for the opening of `titk report`: the settings and images to use, the objective and
floors they were judged by, how sure the choice is, and what to try next.

A confirmation (`titk confirm`) compares the best trials with the baseline recipe over several seeds; without
one, the leader of the search is only a single measurement, and the report says so before anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from markupsafe import Markup

from .. import stats
from ..sweep.confirm import load_confirmation
from ..sweep.trials import best_trials, measured, seed_noise


@dataclass
class Decision:
    headline: str  # the first sentence of the report
    confirmed: bool
    settings: list[tuple[str, str]] = field(default_factory=list)  # (setting, value) to use
    images: str = ""  # which training images
    objective: str = ""
    floors: list[str] = field(default_factory=list)
    sureness: list[str | Markup] = field(default_factory=list)
    noise: str = ""
    next: str | Markup = ""
    candidates: list[list[str]] = field(default_factory=list)  # the confirmation's comparisons, one row each
    level: float = 0.95
    record: dict | None = None


def objective_of(study) -> tuple[str, list[str]]:
    """The objective and the floors the sweep was run with, in words, from the study's `titk.config`."""
    config = study.user_attrs.get("titk.config")
    if not isinstance(config, dict):
        return "not recorded (the study was not made by titk sweep)", []
    objective = config.get("objective") or {}
    floors = [f"{metric} ≥ {value:g}" for metric, value in (objective.get("floors") or {}).items()]
    if objective.get("pareto"):
        return "maximise " + " and ".join(objective["pareto"]) + " together (a Pareto front, no single winner)", floors
    terms = [(f"{w:g} × {m}" if w != 1 else m) for m, w in (objective.get("metrics") or {}).items()]
    return "maximise " + (" + ".join(terms) or "the study's value"), floors


def noise_sentence(trials: pd.DataFrame) -> tuple[stats.Interval | None, str]:
    """The study's seed-to-seed spread from its baseline trial, or why there is none."""
    interval = seed_noise(trials)
    if interval is not None and interval.has_interval:
        from scipy.stats import norm

        # Two single-seed runs of the same settings differ by less than this 95 % of the time.
        spread = norm.ppf(0.975) * math.sqrt(2) * interval.sd
        return interval, (f"The baseline recipe scores {interval.text()} across seeds (sd {interval.sd:.3f}), so two "
                          f"single-seed trials with the same settings differ by up to about {spread:.3f}; smaller gaps "
                          f"between single-seed trials are noise.")
    base = trials[trials["baseline"].fillna(False).astype(bool)] if "baseline" in trials else trials.head(0)
    if base.empty:
        why = "this study has no baseline trial (a recipe enqueued and repeated over seeds)"
    elif not (base["state"] == "COMPLETE").any():
        why = f"the baseline trial did not finish ({', '.join(s.lower() for s in base['state'])})"
    else:
        why = "the baseline ran one seed"
    return None, f"Not measured: {why}; differences between single-seed trials cannot be told from noise."


def trial_interval(row) -> stats.Interval:
    """The objective of a trial over its seeds (its value alone when it recorded no per-seed values)."""
    values = row.get("values_per_seed")
    if not isinstance(values, list) or not values or isinstance(values[0], list):
        values = [row.get("value")]
    return stats.mean_interval(values)


def settings_of(params: dict) -> list[tuple[str, str]]:
    return [(name, _plain(value)) for name, value in sorted(params.items()) if not name.startswith("include:")]


def images_text(subset, images: list[str]) -> str:
    if not isinstance(subset, (list, tuple)):
        return f"all {len(images)} training images" if images else "all training images"
    left_out = [name for name in images if name not in subset]
    text = f"{len(subset)} images: {', '.join(subset)}"
    return text + (f" (leave out {', '.join(left_out)})" if left_out else "")


def decide(data, workdir_hint: str = "WORKDIR") -> Decision:
    """The decision for `data` (a StudyData): from its confirmation record when there is one."""
    objective, floors = objective_of(data.study)
    _, noise = noise_sentence(data.trials)
    command = f"titk confirm {data.workdir}" if data.workdir else f"titk confirm {workdir_hint}"
    record = load_confirmation(data.study)
    if record:
        return _confirmed(record, data, objective, floors, noise)
    done = measured(data.trials)
    if data.trials.empty or done.empty or "value" not in done and "value0" not in done:
        return Decision("No decision yet: no trial was trained to the end.", False, objective=objective, floors=floors, noise=noise,
                        next=Markup("Run the sweep; then <code>{}</code>.").format(command))
    if len(data.study.directions) > 1:
        front = best_trials(data.study, data.trials)
        return Decision(f"Unconfirmed: {len(front)} trials are on the Pareto front of a two-objective study; none is a single winner, "
                        "and none has been confirmed against the recipe.", False, objective=objective, floors=floors, noise=noise,
                        next=Markup("Choose a trial on the front (below), then confirm it over several seeds: <code>{}</code>.").format(command))
    leader = best_trials(data.study, data.trials, 1).iloc[0]
    interval = trial_interval(leader)
    feasible = bool(leader.get("feasible", True))
    seeds = "one seed" if interval.n == 1 else f"{interval.n} seeds"
    spread = f"({interval.level * 100:.3g} % CI {interval.low:.3f} to {interval.high:.3f})" if interval.has_interval else "with no interval"
    if bool(leader.get("baseline")):
        headline = (f"Unconfirmed: the baseline recipe (trial {leader['trial']}) leads the search with {interval.mean:.3f}, measured on "
                    f"{seeds} {spread}; no searched setting beat it, and none has been compared with it over several seeds.")
    else:
        headline = (f"Unconfirmed: trial {leader['trial']} leads the search with {interval.mean:.3f}, measured on {seeds} {spread}, "
                    "and has not been compared with the recipe over several seeds: it may be luck.")
    if not feasible:
        headline += " No trial met the floors; this one comes closest."
    params = {k.removeprefix("param."): v for k, v in leader.items() if k.startswith("param.") and _present(v)}
    return Decision(
        headline, False, settings_of(params), images_text(leader.get("subset"), data.images), objective, floors,
        [f"Trial {leader['trial']}: {interval.text()} on the search's suite; this study has no confirmation record."],
        noise, Markup("Confirm the winner: <code>{}</code> re-runs the best trials and the baseline recipe with several seeds "
                      "on the full final suite and compares each with the recipe.").format(command),
    )


def _confirmed(record: dict, data, objective: str, floors: list[str], noise: str) -> Decision:
    level = record.get("level", 0.95)
    seeds = record.get("seeds") or []
    best, baseline = record.get("best"), record.get("baseline") or {}
    count = len(record.get("candidates") or [])
    sureness = [(f"Confirmed on the {record.get('suite', 'final')} suite with {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
                 f"each candidate paired with the baseline recipe ({baseline.get('label', 'the recipe')}) seed by seed"
                 + (f"; each interval is at {level * 100:.3g} % so that the {count} candidates' hold together (Bonferroni)." if count > 1 else "."))]
    if best:
        sureness.append(f"{best['label']}: {_signed(best['difference'])} against the recipe, {level * 100:.3g} % CI "
                        f"{_signed(best['ci_low'])} to {_signed(best['ci_high'])}, p = {_p(best['p_value'])} ({best['verdict']}).")
        settings, images = settings_of(best.get("params") or {}), images_text(best.get("subset"), data.images)
    else:
        sureness.append("No candidate's interval lies above zero: keep the recipe.")
        settings, images = settings_of(baseline.get("params") or {}), images_text(baseline.get("subset"), data.images)
    candidates = [[str(c.get("trial", "")), c["label"], _signed(c["difference"]), f"{_signed(c['ci_low'])} to {_signed(c['ci_high'])}",
                   _p(c["p_value"]), c["verdict"]] for c in record.get("candidates") or []]
    return Decision(record.get("sentence") or "", True, settings, images, objective, floors, sureness, noise,
                    record.get("next") or "", candidates, level, record)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _signed(value) -> str:
    return f"{value:+.3f}" if _present(value) else "–"


def _p(value) -> str:
    return f"{value:.2g}" if _present(value) else "–"


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
