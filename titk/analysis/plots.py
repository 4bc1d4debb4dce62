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
    fig, ax = _figure()
    for state, group in trials.groupby("state"):
        ax.scatter(group["trial"], group[column] if column in group else np.zeros(len(group)), label=state.lower(), color=STATE_COLOURS.get(state, "#555"), s=28)
    done = trials[trials["state"] == "COMPLETE"].sort_values("trial")
    if column in done and not done.empty:
        ax.step(done["trial"], done[column].cummax(), where="post", color="#333", lw=1, label="best so far")
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


def curves(table: pd.DataFrame, metric: str, highlight: list[int] | None = None, final: str | None = None):
    """One line per trial; `final` names a metric (the final evaluation's, on another suite) drawn as an
    unjoined marker at its step, in the colour of the trial's line."""
    fig, ax = _figure()
    data = table[table["metric"] == metric]
    ends = table[table["metric"] == final] if final else table.iloc[:0]
    for trial, group in data.groupby("trial"):
        strong = highlight and trial in highlight
        (line,) = ax.plot(group["step"], group["value"], lw=2 if strong else 0.8, alpha=1 if strong else 0.45, label=f"trial {trial}" if strong else None)
        end = ends[ends["trial"] == trial]
        ax.scatter(end["step"], end["value"], marker="*", s=90 if strong else 40, color=line.get_color(), alpha=1 if strong else 0.45, zorder=3)
    if not ends.empty:
        ax.scatter([], [], marker="*", color="#555", label=f"{final} (final evaluation)")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training")
    if highlight or not ends.empty:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attribution(table: pd.DataFrame, column: str):
    shown = table.dropna(subset=["effect"])
    fig, ax = _figure(height=max(2.2, 0.32 * len(shown) + 1.2))
    y = np.arange(len(shown))
    colours = ["#c0392b" if hi < 0 else "#2a9d4b" if lo > 0 else "#777" for lo, hi in zip(shown["ci_low"], shown["ci_high"])]
    ax.errorbar(shown["effect"], y, xerr=[shown["effect"] - shown["ci_low"], shown["ci_high"] - shown["effect"]], fmt="none", ecolor="#aaa")
    ax.scatter(shown["effect"], y, color=colours, zorder=3)
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_yticks(y, shown["image"])
    ax.set_xlabel(f"effect of including the image on {column}")
    ax.set_title("per-image attribution (95% CI)")
    fig.tight_layout()
    return fig


def personality(table: pd.DataFrame, label_set: str, trials: list[int]):
    data = table[table["set"] == label_set]
    labels = list(dict.fromkeys(data["label"]))
    if not labels:
        fig, ax = _figure()
        ax.set_title(f"{label_set}: no histograms")
        return fig
    dataset = data.groupby("label")["dataset"].first().reindex(labels)
    series = {"dataset": dataset.values} | {f"trial {t}": data[data["trial"] == t].set_index("label")["generated"].reindex(labels).values for t in trials}
    fig, ax = _figure(width=max(6.0, 0.8 * len(labels) + 2))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + i * width, values, width, label=name, color="#444" if name == "dataset" else None)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of images")
    ax.set_title(f"{label_set}: generated against the dataset")
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
