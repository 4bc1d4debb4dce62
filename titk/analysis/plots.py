"""Figures for notebooks and the report; each function returns a matplotlib Figure."""

from __future__ import annotations

# No backend is forced: matplotlib chooses Agg on a headless machine, and Jupyter's inline backend
# in a notebook, where these figures then show up by themselves.
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
import pandas as pd

STATE_COLOURS = {"COMPLETE": "#2a7ab9", "PRUNED": "#e0a030", "FAIL": "#c0392b", "RUNNING": "#888888"}


def _figure(width=7.0, height=3.6):
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(alpha=0.3)
    return fig, ax


def history(trials: pd.DataFrame, column: str = "value", title: str = "objective by trial"):
    """Complete trials at their objective, with the best so far; pruned and failed trials have no final
    score, so they are only marked along the bottom (a pruned trial's Optuna value is an intermediate one)."""
    fig, ax = _figure()
    strip = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for state, group in trials.groupby("state"):
        colour = STATE_COLOURS.get(state, "#555")
        if state == "COMPLETE" and column in group:
            ax.scatter(group["trial"], group[column], label="complete", color=colour, s=28)
        else:
            ax.scatter(group["trial"], [0.03] * len(group), transform=strip, marker="|", s=160, color=colour,
                       label=f"{state.lower()} (no final score)", clip_on=False)
    done = trials[trials["state"] == "COMPLETE"].sort_values("trial")
    if column in done and not done.empty:
        ax.step(done["trial"], done[column].cummax(), where="post", color="#333", lw=1, label="best so far")
    if not trials.empty:  # the bottom marks are not in data coordinates, so autoscaling would leave them out
        ax.set_xlim(trials["trial"].min() - 0.5, trials["trial"].max() + 0.5)
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(column)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def importance(series: pd.Series, title: str = "parameter importance"):
    fig, ax = _figure(height=max(2.0, 0.45 * len(series) + 1))
    ax.barh(list(series.index)[::-1], list(series.values)[::-1], color="#2a7ab9")
    ax.set_xlabel("importance")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pareto(trials: pd.DataFrame, a: str, b: str, front: pd.DataFrame):
    fig, ax = _figure(5.5, 4.2)
    ax.scatter(trials[a], trials[b], color="#9bb7d4", s=26, label="trials")
    ax.plot(front[a], front[b], "o-", color="#c0392b", label="Pareto front")
    for trial, x, y in zip(front["trial"], front[a], front[b]):
        ax.annotate(f"trial {trial}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(a)
    ax.set_ylabel(b)
    ax.set_title("identity against editability")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves(table: pd.DataFrame, metric: str, highlight: list[int] | None = None, final: str | None = None, pruned: list[int] | None = None):
    """One line per trial; `final` names a metric (the final evaluation's) drawn as an unjoined marker at its
    step, in the colour of the trial's line; `pruned` trials are dashed (they never reached a final score)."""
    fig, ax = _figure()
    data = table[table["metric"] == metric]
    ends = table[table["metric"] == final] if final else table.iloc[:0]
    for trial, group in data.groupby("trial"):
        strong = highlight and trial in highlight
        (line,) = ax.plot(group["step"], group["value"], lw=2 if strong else 0.8, alpha=1 if strong else 0.45, label=f"trial {trial}" if strong else None,
                          ls="--" if pruned and trial in pruned else "-")
        end = ends[ends["trial"] == trial]
        ax.scatter(end["step"], end["value"], marker="*", s=90 if strong else 40, color=line.get_color(), alpha=1 if strong else 0.45, zorder=3)
    if not ends.empty:
        ax.scatter([], [], marker="*", color="#555", label=f"{final} (final evaluation)")
    if pruned and set(pruned) & set(data["trial"]):
        ax.plot([], [], ls="--", color="#555", label="pruned")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training")
    if highlight or not ends.empty or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attribution(table: pd.DataFrame, column: str):
    """Each image's effect on `column` with its interval (image_attribution's table), worst at the top;
    red when the interval lies below zero, green above. Without intervals the title says why."""
    shown = table.dropna(subset=["effect"])
    fig, ax = _figure(height=max(2.2, 0.32 * len(shown) + 1.4))
    y = np.arange(len(shown))[::-1]  # the table is sorted worst first: worst at the top
    low, high, effect = shown["ci_low"].to_numpy(float), shown["ci_high"].to_numpy(float), shown["effect"].to_numpy(float)
    has = np.isfinite(low) & np.isfinite(high)
    colours = ["#c0392b" if h < 0 else "#2a9d4b" if lo > 0 else "#777" for lo, h in zip(low, high)]
    if has.any():
        ax.errorbar(effect[has], y[has], xerr=[effect[has] - low[has], high[has] - effect[has]], fmt="none", ecolor="#888", capsize=3)
    ax.scatter(effect, y, color=colours, zorder=3)
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_yticks(y, shown["image"], fontsize=8)
    fixed = table.attrs.get("method", "").endswith("fixed size")
    ax.set_xlabel(f"change in {column} from training on the image " + ("instead of an average other one" if fixed else "(added)"))
    level, trials, note = table.attrs.get("level", 0.95), table.attrs.get("trials"), table.attrs.get("note", "")
    count = f", {trials} trials" if trials is not None else ""
    ax.set_title(f"per-image attribution ({level:.0%} CI{count})" if has.any() else f"per-image attribution, no intervals: {note or 'none computed'}",
                 fontsize=10 if has.any() else 8)
    fig.tight_layout()
    return fig


def personality(table: pd.DataFrame, label_set: str, trials: list[int]):
    data = table[table["set"] == label_set]
    labels = list(dict.fromkeys(data["label"]))
    if not labels:
        fig, ax = _figure()
        ax.set_title(f"{label_set}: no histograms")
        return fig
    # Each bar: a share with its 95 % interval over the images it was counted on ("n" in the legend).
    # The dataset's bars: the images the first shown trial trained on (trials of a subset study differ)
    shown = data[data["trial"] == trials[0]] if trials and (data["trial"] == trials[0]).any() else data
    first = shown.groupby("label").first().reindex(labels)
    whose = f"trial {trials[0]}'s images, " if trials and data.groupby("trial")["dataset"].apply(tuple).nunique() > 1 else ""
    series = {f"dataset ({whose}n={int(first['n_dataset'].iloc[0])})": first[["dataset", "dataset_low", "dataset_high"]].to_numpy()}
    untrained = data[data["trial"].isin(trials) & (data["n_untrained"] > 0)]
    if not untrained.empty:  # the start before training (the first best trial's; trials of one init share it)
        rows = untrained[untrained["trial"] == untrained["trial"].iloc[0]].set_index("label").reindex(labels)
        series[f"untrained (n={int(rows['n_untrained'].max())})"] = rows[["untrained", "untrained_low", "untrained_high"]].to_numpy()
    for t in trials:
        rows = data[data["trial"] == t].set_index("label").reindex(labels)
        n = int(rows["n_generated"].max()) if rows["n_generated"].notna().any() else 0
        series[f"trial {t} (n={n})"] = rows[["generated", "generated_low", "generated_high"]].to_numpy()
    fig, ax = _figure(width=max(6.0, 0.8 * len(labels) + 2))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        share, low, high = values.T
        colour = "#444" if name.startswith("dataset") else "#bbb" if name.startswith("untrained") else None
        ax.bar(np.arange(len(labels)) + i * width, share, width, label=name, color=colour,
               yerr=[share - low, high - share], error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#222"})
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of images (95% CI)")
    ax.set_title(f"{label_set}: generated against the dataset")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dose_response(table: pd.DataFrame):
    """A label's share in each trial's images against its share in the trial's TI (95 % intervals); the
    diagonal is a TI that took on exactly its dataset's share."""
    fig, ax = _figure()
    a = table.attrs
    if table.empty:
        ax.set_title(f"{a.get('set')}: no trials")
        return fig
    x, y = table["dataset"].to_numpy(float), table["generated"].to_numpy(float)
    ax.errorbar(x, y, yerr=[y - table["generated_low"].to_numpy(float), table["generated_high"].to_numpy(float) - y],
                fmt="o", color="#2a7ab9", ecolor="#888", capsize=3)
    ax.plot([0, 1], [0, 1], color="#bbb", lw=0.8, ls="--", label="TI share = dataset share")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"share of {a['label']!r} in the trial's images")
    ax.set_ylabel(f"share of {a['label']!r} in its TI's images (95% CI)")
    rho = f"Spearman ρ {a['rho']:.2f} (p {a['p']:.2g}, {a['trials']} trials)" if a["rho"] == a["rho"] else f"{a['trials']} trials, too few dataset shares for a correlation"
    ax.set_title(f"{a['set']}: dose-response; {rho}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def seeds(table: pd.DataFrame):
    fig, ax = _figure()
    y = np.arange(len(table))
    ax.errorbar(table["mean"], y, xerr=[table["mean"] - table["ci_low"], table["ci_high"] - table["mean"]], fmt="o", color="#2a7ab9", capsize=3)
    for i, values in enumerate(table["values"]):
        ax.scatter(values, [i] * len(values), color="#999", s=12, zorder=3)
    ax.set_yticks(y, [f"trial {t}" for t in table["trial"]])
    ax.set_xlabel("objective across seeds (95% CI)")
    ax.set_title("seed variance of the best settings")
    fig.tight_layout()
    return fig


def confirmation(record: dict):
    """Each confirmed candidate's difference from the baseline recipe with its interval (paired over seeds)."""
    rows = record.get("candidates") or []
    fig, ax = _figure(height=max(2.2, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    colours = {"better": "#2a9d4b", "worse": "#c0392b"}
    for i, c in zip(y, rows):
        # The stored record writes a missing interval (one seed) as null: a point without a bar.
        mid, low, high = (np.nan if c.get(k) is None else float(c[k]) for k in ("difference", "ci_low", "ci_high"))
        bar = [[mid - low], [high - mid]] if low == low and high == high else None
        ax.errorbar([mid], [i], xerr=bar, fmt="o", color=colours.get(c["verdict"], "#777"), capsize=4)
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_yticks(y, [c["label"] for c in rows], fontsize=8)
    level, seeds = record.get("level", 0.95), len(record.get("seeds") or [])
    baseline = (record.get("baseline") or {}).get("label", "the recipe")
    ax.set_xlabel(f"difference from {baseline} in {record.get('objective', 'the objective')}")
    ax.set_title(f"confirmation: difference from the recipe ({level * 100:.3g} % CI, {seeds} seeds)")
    fig.tight_layout()
    return fig


def signal_correlation(table: pd.DataFrame):
    """Spearman correlation of each intermediate signal with the final objective, by step."""
    fig, ax = _figure()
    for signal, group in table.sort_values("step").groupby("signal"):
        ax.plot(group["step"], group["spearman"], "o-", label=signal)
    ax.axhline(0, color="#333", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("step of the intermediate evaluation")
    ax.set_ylabel("Spearman ρ with the final objective")
    ax.set_title(f"do intermediate signals predict the final score? (up to {int(table['trials'].max())} trials)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
