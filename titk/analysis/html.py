"""`titk report`: one self-contained HTML page about a study, readable offline, that opens with the decision.

The page is the Jinja2 template `templates/report.html` (package data); this module gathers what it shows.
Every figure and sample grid is embedded as a PNG data URI; there are no external files, fonts or scripts
beyond the inline check that counts the figures a browser decoded. A section that cannot be drawn stays on
the page with the reason, and a figure that rests on few trials says how few.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from . import effects, plots
from ..embeddings.health import health
from ..evaluate.registry import CURVE_METRIC, INTERMEDIATE
from ..stats import shift_interval
from ..sweep.trials import best_trials, failure_summary, measured
from .decision import decide, trial_interval
from .predictiveness import describe as describe_signals, signal_correlations
from .study import StudyData

SECTIONS = ("decision", "progress", "best trials", "sample grids", "importance", "Pareto front", "learning curves",
            "signal correlation", "attribution", "personality", "seed variance")
RELIABLE_TRIALS = 20  # below about 10-20 complete trials, importance and attribution rankings are mostly noise
SHOWN_METRICS = ("metric.identity.similarity", "metric.identity.detection_rate", "metric.clip_t", "metric.clip_i")
COPY_INDEX = "metric.identity.copy_index"


@dataclass
class Section:
    key: str
    title: str
    notes: list = field(default_factory=list)  # sentences (str, or Markup for a command)
    caveats: list = field(default_factory=list)  # what the reader must not over-read
    reason: str | None = None  # why the section is not drawn
    figures: list[dict] = field(default_factory=list)  # {"src", "alt", "caption"}
    tables: list[dict] = field(default_factory=list)  # {"columns", "rows"}


def _png(figure_or_image) -> str:
    buffer = io.BytesIO()
    if isinstance(figure_or_image, Image.Image):
        figure_or_image.save(buffer, format="PNG")
    else:
        figure_or_image.savefig(buffer, format="png")
        import matplotlib.pyplot as plt

        plt.close(figure_or_image)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(figure, alt: str, caption: str = "") -> dict:
    return {"src": _png(figure), "alt": alt, "caption": caption}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _table(frame: pd.DataFrame, max_rows: int = 30) -> dict:
    shown = frame.head(max_rows)
    return {"columns": [str(c) for c in shown.columns], "rows": [[_cell(v) for v in row] for row in shown.itertuples(index=False)]}


def _final_grid(data: StudyData, run_id: str) -> Image.Image | None:
    """The final sample grid a trial logged to MLflow (`samples.png`, or its first seed's with several)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        client = data.client()
        names = [a.path for a in client.list_artifacts(run_id) if a.path.startswith("samples") and a.path.endswith(".png")]
        if not names:
            return None
        local = client.download_artifacts(run_id, min(names, key=len))
        return Image.open(local).convert("RGB")
    except Exception:  # a missing or unreadable artifact leaves the grid out, not the report
        return None


def _confirmed_grid(data: StudyData, record: dict) -> dict | None:
    """The final samples of what the decision says to use (confirmation's first seed), when the work
    directory holds them."""
    best, seeds = record.get("best"), record.get("seeds") or []
    if data.workdir is None or not seeds:
        return None
    key = f"trial-{best['trial']}" if best else "baseline"
    path = Path(data.workdir) / "confirm" / key / f"seed-{seeds[0]}" / "samples.png"
    if not path.is_file():
        return None
    with Image.open(path) as image:
        what = best["label"] if best else (record.get("baseline") or {}).get("label", "the recipe")
        return {"src": _png(image.convert("RGB")), "alt": f"samples of {what}", "caption": f"{what}: confirmation samples, seed {seeds[0]}"}


def _health(ratio) -> str:
    """A norm ratio with its flag (the rule is `titk inspect`'s too)."""
    if ratio is None or ratio != ratio:
        return "–"
    return f"{ratio:.2f}× ({health(ratio)})"


def build_report(data: StudyData, top: int = 3, on_progress=None) -> str:
    """The report's page; `on_progress(section)` is called as each of SECTIONS begins (the sample grids and
    curves come from MLflow, which can take a while on a tracking server)."""
    tick = on_progress or (lambda section: None)
    trials = data.trials
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    meta = (", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no trials") + f" · generated {time.strftime('%Y-%m-%d %H:%M')}"
    meta += f" · tracking {data.tracking_uri}" if data.tracking_uri else ""
    tick("decision")
    decision = decide(data)
    confirmation = None
    if decision.record and decision.record.get("candidates"):
        confirmation = _figure(plots.confirmation(decision.record), "confirmation: difference from the recipe",
                               "each candidate minus the baseline recipe, paired by seed, with its interval")
        confirmation["grid"] = _confirmed_grid(data, decision.record)
    page = {"title": data.name, "meta": meta, "decision": decision, "confirmation": confirmation, "sections": []}
    done = measured(trials)
    if trials.empty or not data.objectives or done.empty:
        failures = failure_summary(trials)
        page["meta"] += " · no trial was trained to the end" + (f": {failures}" if failures else " yet")
        return _render(page)

    objective = data.objectives[0]
    multi = len(data.study.directions) > 1
    sections = page["sections"]
    tick("progress")
    sections.append(_progress(trials, objective))
    tick("best trials")
    best = best_trials(data.study, trials, top) if not multi else best_trials(data.study, trials).head(top)
    sections.append(_best_trials(trials, best, decision))
    tick("sample grids")
    sections.append(_sample_grids(data, best))
    tick("importance")
    sections.append(_importance(data, done))
    tick("Pareto front")
    sections.append(_pareto(data, done, multi))
    tick("learning curves")
    curves, why_no_curves = _curves(data)
    sections.append(_learning_curves(curves, why_no_curves, list(best["trial"]), trials))
    tick("signal correlation")
    sections.append(_signal_correlation(curves, why_no_curves, trials, done))
    tick("attribution")
    sections.append(_attribution(data, done, objective if not multi else "value0"))
    tick("personality")
    sections.append(_personality(done, list(best["trial"])))
    tick("seed variance")
    sections.append(_seed_variance(done, multi))
    return _render(page)


def _progress(trials: pd.DataFrame, objective: str) -> Section:
    section = Section("progress", "Progress", figures=[_figure(plots.history(trials, objective), "objective by trial")])
    pruned = int((trials["state"] == "PRUNED").sum())
    if pruned:
        section.notes.append(f"{pruned} pruned trial{'s are' if pruned > 1 else ' is'} marked along the bottom: a pruned trial has "
                             "only an intermediate score, never a final one, so it is not ranked.")
    return section


def _best_trials(trials: pd.DataFrame, best: pd.DataFrame, decision) -> Section:
    base = trials[trials["baseline"].fillna(False).astype(bool) & (trials["state"] == "COMPLETE")] if "baseline" in trials else trials.head(0)
    rows = pd.concat([best, base[~base["trial"].isin(best["trial"])]])
    confirmed = {c.get("trial"): c["verdict"] for c in (decision.record or {}).get("candidates") or []}
    marks = rows["baseline"].map(lambda b: " (baseline)" if b is True else "") if "baseline" in rows else ""
    table = pd.DataFrame({"trial": rows["trial"].astype(str) + marks})
    if "value" in rows:
        table["objective over seeds"] = [trial_interval(r).text() for _, r in rows.iterrows()]
    else:
        for column in ("value0", "value1"):
            table[column] = rows[column].to_numpy()
    if "feasible" in rows and not rows["feasible"].all():
        table["meets floors"] = rows["feasible"].map({True: "yes", False: "no"}).to_numpy()
    if confirmed:
        table["confirmation"] = [confirmed.get(t, "not re-run") for t in rows["trial"]]
    for column in [c for c in rows if c.startswith("param.")]:
        table[column.removeprefix("param.")] = rows[column].to_numpy()
    for column in [c for c in SHOWN_METRICS if c in rows]:
        table[column.removeprefix("metric.")] = rows[column].to_numpy()
    if COPY_INDEX in rows:
        table["copy index (lower: less copying)"] = rows[COPY_INDEX].to_numpy()
    # TI health per encoder: the largest vector's norm against the vocabulary's median (what the flag judges);
    # studies from before it was recorded have the mean vector's.
    ratios = sorted(c for c in rows if c.startswith("metric.norms.") and c.endswith("_vs_vocab_median"))
    for column in ratios:
        encoder = column.removeprefix("metric.norms.").removesuffix("_vs_vocab_median")
        if encoder.endswith("_max"):
            table[f"{encoder.removesuffix('_max')} largest norm ÷ vocab median"] = [_health(v) for v in rows[column]]
        elif column.replace("_vs_vocab", "_max_vs_vocab") not in ratios:
            table[f"{encoder} mean norm ÷ vocab median"] = [_health(v) for v in rows[column]]
    section = Section("best-trials", "Best trials", tables=[_table(table)])
    section.notes.append("Objective: the mean over a trial's seeds with a 95 % t-interval where it ran two or more seeds; "
                         "\"1 seed, no interval\" where it ran one.")
    pruned = int((trials["state"] == "PRUNED").sum())
    if pruned:
        section.notes.append(f"{pruned} pruned trial{'s are' if pruned > 1 else ' is'} left out: pruned trials have no final score.")
    return section


def _sample_grids(data: StudyData, best: pd.DataFrame) -> Section:
    section = Section("sample-grids", "Samples of the best trials")
    if not data.tracking_uri:
        section.reason = "the study was loaded without a tracking URI, and the sample grids are MLflow artifacts"
        return section
    for row in best.itertuples(index=False):
        grid = _final_grid(data, row.mlflow_run_id) if isinstance(row.mlflow_run_id, str) else None
        if grid is not None:
            section.figures.append({"src": _png(grid), "alt": f"samples of trial {row.trial}", "caption": f"trial {row.trial}: final samples"})
    if not section.figures:
        section.reason = "no best trial logged a final sample grid to MLflow"
    return section


def _importance(data: StudyData, done: pd.DataFrame) -> Section:
    section = Section("importance", "Which settings matter")
    importance = effects.param_importance(data.study)
    if importance.empty:
        section.reason = f"importance needs at least two complete trials and a searched setting ({len(done)} complete)"
        return section
    section.notes.append(f"From {len(done)} complete trials, by Optuna's PED-ANOVA (fANOVA where PED-ANOVA cannot judge the study).")
    if len(done) < RELIABLE_TRIALS:
        section.caveats.append(f"Only {len(done)} trials: importance from fewer than about 10–20 trials is unreliable; "
                               "read it as a hint of where to search, not as a finding.")
    section.figures.append(_figure(plots.importance(importance, f"parameter importance ({len(done)} trials)"), "parameter importance"))
    section.tables.append(_table(importance.rename("importance").reset_index().rename(columns={"index": "setting"})))
    return section


def _pareto(data: StudyData, done: pd.DataFrame, multi: bool) -> Section:
    section = Section("pareto", "Identity against editability")
    pair = ("value0", "value1") if multi else ("metric.identity.similarity", "metric.clip_t")
    missing = [c.removeprefix("metric.") for c in pair if c not in done or not done[c].notna().any()]
    if missing:
        section.reason = (f"this is not a two-objective study (objective.pareto is unset), and the pair it would draw instead was "
                          f"not measured: {' and '.join(missing)} missing")
        return section
    front = effects.pareto_front(done, *pair)
    section.notes.append(f"{len(front)} of {len(done)} complete trials are on the front.")
    section.figures.append(_figure(plots.pareto(done, *pair, front), "Pareto front"))
    section.tables.append(_table(front[["trial", *pair]]))
    return section


def _curves(data: StudyData) -> tuple[pd.DataFrame, str | None]:
    empty = pd.DataFrame(columns=["trial", "metric", "step", "value"])
    if not data.tracking_uri:
        return empty, "the study was loaded without a tracking URI, and the curves are MLflow metric histories"
    try:
        curves = data.curves()
    except Exception as exc:  # an unreachable tracking server leaves the curves out, not the report
        return empty, f"the metric histories could not be read from MLflow ({type(exc).__name__})"
    if curves[curves["metric"].str.startswith(INTERMEDIATE)].empty:
        return curves, "no trial logged intermediate evaluations (objective.eval_every is 0, or the runs are too short)"
    return curves, None


def _learning_curves(curves: pd.DataFrame, why: str | None, highlight: list[int], trials: pd.DataFrame) -> Section:
    section = Section("learning-curves", "Learning curves")
    pruned = list(trials.loc[trials["state"] == "PRUNED", "trial"])
    if not curves.empty and "value" in trials:
        # The final objective as a marker at each complete trial's last step: the intermediate objective is
        # measured on part of the final suite, so the two share one scale.
        done = trials[trials["state"] == "COMPLETE"].set_index("trial")["value"]
        ends = curves[curves["trial"].isin(done.index)].groupby("trial")["step"].max()
        finals = pd.DataFrame({"trial": ends.index, "metric": "objective", "step": ends.to_numpy(), "value": done.loc[ends.index].to_numpy()})
        curves = pd.concat([curves, finals], ignore_index=True)
    for metric, final in ((INTERMEDIATE + "objective", "objective"), (INTERMEDIATE + CURVE_METRIC, CURVE_METRIC),
                          ("validation.loss", None), ("train.loss", None)):
        if not curves.empty and not curves[curves["metric"] == metric].empty:
            section.figures.append(_figure(plots.curves(curves, metric, highlight, final=final, pruned=pruned), f"{metric} curves", metric))
    if pruned and section.figures:
        section.notes.append("Pruned trials are drawn dashed; they stop at their last intermediate evaluation.")
    if not section.figures:
        section.reason = why or "no trial logged the curve metrics"
    return section


def _signal_correlation(curves: pd.DataFrame, why: str | None, trials: pd.DataFrame, done: pd.DataFrame) -> Section:
    section = Section("signal-correlation", "Do intermediate scores predict the final one?")
    if why:
        section.reason = why
        return section
    table = signal_correlations(curves, trials, "value" if "value" in trials else "value0")
    table = table.dropna(subset=["spearman"]) if not table.empty else table
    if table.empty:
        section.reason = f"too few complete trials with intermediate evaluations for a rank correlation ({len(done)} complete)"
        return section
    most = int(table["trials"].max())
    section.notes.append(f"Spearman's rank correlation between each signal during training and the final objective, over the "
                         f"complete trials (up to {most}); losses are negated (−), so for every signal near +1 means that pruning "
                         "on it keeps the trials that end best, and near 0 that it says nothing about the end.")
    section.notes += describe_signals(table)
    if most < RELIABLE_TRIALS:
        section.caveats.append(f"Only {most} trials: a rank correlation over so few trials has a wide interval; read the p-values.")
    shown = table.assign(signal=[f"−{s}" if neg else s for s, neg in zip(table["signal"], table["negated"])]).drop(columns=["negated"])
    section.figures.append(_figure(plots.signal_correlation(shown), "rank correlation of intermediate signals with the final score"))
    section.tables.append(_table(shown, 60))
    return section


ATTRIBUTION_METHODS = {
    "ols": "a least-squares regression of the objective on the images' inclusion indicators (effect: adding the image)",
    "ols, fixed size": "a least-squares regression of the objective on the images' inclusion indicators; the subsets have one "
                       "size, so an effect is training on the image in place of an average one of the others",
}


def _attribution(data: StudyData, done: pd.DataFrame, column: str) -> Section:
    section = Section("attribution", "Which images help")
    with_subsets = done[done["subset"].map(lambda s: isinstance(s, (list, tuple)))] if "subset" in done else done.head(0)
    if len({tuple(s) for s in with_subsets["subset"]}) < 2:
        section.reason = "all trials trained on the same images (subset search is off), so no image's effect can be told apart"
        return section
    table = effects.image_attribution(done, column, data.images or None)
    if table["ci_low"].notna().sum() == 0:
        note = table.attrs.get("note") or f"{len(with_subsets)} trials"
        section.reason = f"too few trials on different subsets to estimate any image's effect with an interval ({note})"
        return section
    method = table.attrs.get("method", "")
    section.notes.append(f"From {table.attrs.get('trials', len(with_subsets))} trials on different image subsets, by "
                         f"{ATTRIBUTION_METHODS.get(method, method)}; bars are 95 % intervals. An image whose interval lies "
                         "wholly below zero lowered the objective.")
    if len(with_subsets) < RELIABLE_TRIALS:
        section.caveats.append(f"Only {len(with_subsets)} trials: with so few, most intervals cross zero and the ranking of images is unreliable.")
    section.figures.append(_figure(plots.attribution(table, column), "per-image attribution"))
    shown = table.drop(columns=[c for c in ("method", "note") if c in table and (c == "method" or not table[c].astype(bool).any())])
    section.tables.append(_table(shown, 60))
    return section


def _personality(done: pd.DataFrame, best: list[int]) -> Section:
    section = Section("personality", "Personality: what the TIs generate by themselves")
    if "personality" not in done or not done["personality"].map(lambda h: isinstance(h, dict)).any():
        section.reason = "no trial recorded personality histograms (the evaluation's personality labels were off)"
        return section
    table, summary = effects.personality_table(done), effects.personality_summary(done)
    shown = table[table["trial"].isin(best)]
    if not shown.empty:
        n = int(shown["n_generated"].min())
        half = (shown["generated_high"] - shown["generated_low"]).max() / 2
        section.notes.append(
            f"Each share has a 95 % interval over the images it was counted on (Wilson's): as few as {n} generated "
            f"images per trial here, so a share is known only to ±{half:.0%} at worst; a difference between two "
            "bars means something only where their intervals are apart."
        )
        section.notes += _shift_sentences(shown[shown["trial"] == best[0]] if best else shown)
    section.tables.append(_table(summary[summary["trial"].isin(best)], 40))
    for label_set in dict.fromkeys(table["set"]):
        section.figures.append(_figure(plots.personality(table, label_set, best), f"personality {label_set}"))
    for label_set in dict.fromkeys(table["set"]):  # where the trials' images differ in composition: the dose-response
        curve = effects.dose_response(done, label_set)
        if curve["dataset"].nunique() >= 3:
            a = curve.attrs
            section.notes.append(f"{label_set}, {a['label']}: over {a['trials']} trials whose images held it in {curve['dataset'].nunique()} "
                                 f"different shares, the TI's share follows the dataset's with Spearman ρ {a['rho']:.2f} (p {a['p']:.2g}).")
            section.figures.append(_figure(plots.dose_response(curve), f"dose-response {label_set}"))
    return section


def _shift_sentences(rows: pd.DataFrame) -> list[str]:
    """Per label set of one trial, on the dataset's most common label: the dataset's share, the untrained
    start's and the TI's with their intervals, and how much of the dataset's skew the TI took on."""
    out = []
    for label_set, part in rows.groupby("set", sort=False):
        if not (part["n_untrained"] > 0).any():
            continue
        top = part.loc[part["dataset"].idxmax()]

        def pct(s):
            return f"{top[s]:.0%} ({top[s + '_low']:.0%}–{top[s + '_high']:.0%})"

        skew, net = top["dataset"] - top["untrained"], top["generated"] - top["untrained"]
        low, high = shift_interval(round(top["generated"] * top["n_generated"]), int(top["n_generated"]),
                                   round(top["untrained"] * top["n_untrained"]), int(top["n_untrained"]))
        # A ratio of two differences within sampling noise is noise itself (a demo gave "-300 %"): it is stated
        # only when the dataset's interval and the untrained start's are apart.
        apart = top["dataset_low"] > top["untrained_high"] or top["dataset_high"] < top["untrained_low"]
        verdict = (f"it took on {net / skew:.0%} of the dataset's skew" if apart
                   else "the dataset's share is within the untrained start's sampling noise, so no uptake is stated")
        out.append(f"{label_set}, {top['label']}: dataset {pct('dataset')}, untrained {pct('untrained')}, "
                   f"trial {int(top['trial'])} {pct('generated')}; net of the untrained start it moved {net:+.0%} "
                   f"({low:+.0%} to {high:+.0%}); {verdict}.")
    return out


def _seed_variance(done: pd.DataFrame, multi: bool) -> Section:
    section = Section("seed-variance", "Seed variance")
    if multi:
        section.reason = "a two-objective study has no single objective to spread over seeds"
        return section
    variance = effects.seed_variance(done)
    if variance.empty:
        section.reason = "no trial ran two or more seeds (repeats is 1, and no baseline was repeated)"
        return section
    section.notes.append("Each best trial's objective over its seeds (grey dots) with the mean and its 95 % t-interval.")
    section.figures.append(_figure(plots.seeds(variance), "seed variance"))
    section.tables.append(_table(variance.drop(columns=["values"])))
    return section


def _render(page: dict) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("titk.analysis", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html").render(**page)


def write_report(data: StudyData, path: str | Path, on_progress=None) -> Path:
    from ..files import atomic_path

    path = Path(path)
    page = build_report(data, on_progress=on_progress)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
