"""`titk report`: one self-contained HTML page about a study, readable offline.

Every figure and sample grid is embedded as a PNG data URI; there are no external files, fonts or scripts.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from . import effects, plots
from ..evaluate.registry import CURVE_METRIC, INTERMEDIATE
from ..sweep.trials import failure_summary, measured
from .study import StudyData

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#666;font-size:.9em}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:0;max-width:48%}figcaption{font-size:.85em;color:#444}
"""
CHECK = """<script>window.addEventListener('load',function(){var p=[].slice.call(document.querySelectorAll('img.plot'));
document.body.setAttribute('data-plots',p.length);document.body.setAttribute('data-plots-loaded',p.filter(function(i){return i.complete&&i.naturalWidth>0}).length);});</script>"""


def _png(figure_or_image) -> str:
    buffer = io.BytesIO()
    if isinstance(figure_or_image, Image.Image):
        figure_or_image.save(buffer, format="PNG")
    else:
        figure_or_image.savefig(buffer, format="png")
        import matplotlib.pyplot as plt

        plt.close(figure_or_image)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _img(figure, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="{_png(figure)}">'


def _table(frame: pd.DataFrame, max_rows: int = 30) -> str:
    return frame.head(max_rows).to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)


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


SECTIONS = ("progress", "best trials", "sample grids", "importance", "Pareto front", "learning curves", "attribution", "personality", "seed variance")


def build_report(data: StudyData, top: int = 3, on_progress=None) -> str:
    """The report's page; `on_progress(section)` is called as each of SECTIONS begins (the sample grids and
    curves come from MLflow, which can take a while on a tracking server)."""
    tick = on_progress or (lambda section: None)
    trials = data.trials
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    objective = data.objectives[0] if data.objectives else None
    parts = [f"<h1>Study {html.escape(data.name)}</h1>",
             f"<p>{', '.join(f'{n} {s.lower()}' for s, n in counts.items()) or 'no trials'} · generated {time.strftime('%Y-%m-%d %H:%M')}"
             + (f" · tracking {html.escape(data.tracking_uri)}" if data.tracking_uri else "") + "</p>"]
    if trials.empty or objective is None or measured(trials).empty:
        failures = failure_summary(trials)
        parts.append('<p class="note">No trial was trained to the end' + (f": {html.escape(failures)}." if failures else " yet.") + "</p>")
        return _page(data.name, parts)

    multi = len(data.study.directions) > 1
    tick("progress")
    parts += ["<h2>Progress</h2>", _img(plots.history(trials, objective), "objective by trial")]

    tick("best trials")
    done = measured(trials)
    best = done.sort_values(objective, ascending=False).head(top) if not multi else done.head(top)
    columns = ["trial", *data.objectives, *[c for c in trials if c.startswith("param.")],
               *[c for c in ("metric.identity.similarity", "metric.identity.detection_rate", "metric.clip_t", "metric.clip_i") if c in trials], "mlflow_run_id"]
    parts += ["<h2>Best trials</h2>", _table(best[[c for c in columns if c in best]])]
    tick("sample grids")
    figures = []
    for row in best.itertuples(index=False):
        grid = _final_grid(data, row.mlflow_run_id) if isinstance(row.mlflow_run_id, str) else None
        if grid is not None:
            figures.append(f'<figure><img class="plot" alt="samples of trial {row.trial}" src="{_png(grid)}"><figcaption>trial {row.trial}: final samples</figcaption></figure>')
    if figures:
        parts.append('<div class="grids">' + "".join(figures) + "</div>")

    tick("importance")
    importance = effects.param_importance(data.study)
    if not importance.empty:
        parts += ["<h2>Which settings matter</h2>", _img(plots.importance(importance), "parameter importance"),
                  _table(importance.rename("importance").reset_index().rename(columns={"index": "setting"}))]

    tick("Pareto front")
    pair = ("value0", "value1") if multi else ("metric.identity.similarity", "metric.clip_t")
    if all(c in done and done[c].notna().any() for c in pair):
        front = effects.pareto_front(done, *pair)
        parts += ["<h2>Identity against editability</h2>", _img(plots.pareto(done, *pair, front), "Pareto front"), _table(front[["trial", *pair]])]

    tick("learning curves")
    if data.tracking_uri:
        try:
            curves = data.curves()
        except Exception:
            curves = pd.DataFrame(columns=["trial", "metric", "step", "value"])
        for metric, final in ((INTERMEDIATE + CURVE_METRIC, CURVE_METRIC), ("train.loss", None)):
            if not curves[curves["metric"] == metric].empty:
                parts += [f"<h2>Learning curves: {metric}</h2>",
                          _img(plots.curves(curves, metric, list(best["trial"]), final=final), f"{metric} curves")]

    tick("attribution")
    subsets = trials["subset"].map(lambda s: isinstance(s, list)).sum() if "subset" in trials else 0
    varied = len({tuple(s) for s in trials["subset"] if isinstance(s, list)}) > 1 if subsets else False
    if varied:
        column = objective if not multi else "value0"
        table = effects.image_attribution(done, column, data.images or None)
        parts += ["<h2>Which images help</h2>", '<p class="note">Mean objective of trials that trained on the image minus that of trials that did not, with a 95% Welch interval.</p>',
                  _img(plots.attribution(table, column), "per-image attribution"), _table(table, 60)]

    tick("personality")
    if "personality" in trials and trials["personality"].map(lambda h: isinstance(h, dict)).any():
        table = effects.personality_table(done)
        summary = effects.personality_summary(done)
        parts += ["<h2>Personality: what the TIs generate by themselves</h2>", _table(summary[summary["trial"].isin(best["trial"])], 40)]
        for label_set in dict.fromkeys(table["set"]):
            parts.append(_img(plots.personality(table, label_set, list(best["trial"])), f"personality {label_set}"))

    tick("seed variance")
    variance = effects.seed_variance(done) if not multi else pd.DataFrame()
    if not variance.empty:
        parts += ["<h2>Seed variance</h2>", _img(plots.seeds(variance), "seed variance"), _table(variance.drop(columns=["values"]))]
    return _page(data.name, parts)


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>titk · {html.escape(title)}</title>"
            f"<style>{STYLE}</style>{CHECK}</head><body>" + "\n".join(parts) + "</body></html>")


def write_report(data: StudyData, path: str | Path, on_progress=None) -> Path:
    from ..files import atomic_path

    path = Path(path)
    page = build_report(data, on_progress=on_progress)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
