"""Analysis functions on constructed studies whose answers are planted."""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from titk.analysis import (
    image_attribution, label_shares, param_importance, pareto_front, personality_divergence, personality_summary, seed_variance,
    trials_frame,
)

IMAGES = [f"img{i:02d}.png" for i in range(10)]
BAD, TANK = "img03.png", "img07.png"


@pytest.fixture(scope="module")
def planted():
    """60 trials on random 6-of-10 subsets: img03 lowers the score by 0.2; img07 turns the TI to tank tops."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    for _ in range(60):
        trial = study.ask()
        trial.suggest_float("train.learning_rate", 1e-4, 1e-2, log=True)  # irrelevant to the score
        names = [IMAGES[i] for i in sorted(rng.choice(10, size=6, replace=False))]
        value = 0.6 - 0.2 * (BAD in names) + rng.normal(0, 0.02)
        tank = 0.8 if TANK in names else 0.2
        generated = [int(round(20 * tank)), 20 - int(round(20 * tank))]
        trial.set_user_attr("subset", names)
        trial.set_user_attr("personality", {"clothing": {"labels": ["tank top", "t-shirt"], "generated": generated, "dataset": [3, 7]}})
        trial.set_user_attr("values_per_seed", [value + d for d in rng.normal(0, 0.05, 3)])
        study.tell(trial, value)
    return study


def test_an_image_planted_to_lower_the_score_has_negative_attribution(planted):
    table = image_attribution(trials_frame(planted), "value", IMAGES).set_index("image")
    assert table["effect"].idxmin() == BAD
    assert table.loc[BAD, "ci_high"] < 0 and table.loc[BAD, "effect"] == pytest.approx(-0.2, abs=0.03)
    others = table.drop(BAD)
    assert (others["effect"].abs() < 0.08).all()
    assert (table["n_in"] + table["n_out"] == 60).all()


def test_personality_attribution_finds_the_tank_top_image(planted):
    trials = label_shares(trials_frame(planted), "clothing")
    table = image_attribution(trials, "clothing=tank top", IMAGES).set_index("image")
    assert table["effect"].idxmax() == TANK and table.loc[TANK, "ci_low"] > 0.5


def test_personality_summary_and_divergence(planted):
    trials = trials_frame(planted)
    summary = personality_summary(trials)
    assert set(summary.columns) >= {"entropy", "dataset_entropy", "js_to_dataset", "top_label"}
    assert (summary["js_to_dataset"] >= 0).all() and (summary["js_to_dataset"] <= math.log(2) + 1e-9).all()
    div = personality_divergence(trials.head(5), "clothing")
    assert np.allclose(np.diag(div.to_numpy()), 0.0) and np.allclose(div.to_numpy(), div.to_numpy().T)


def test_personality_shares_carry_intervals_that_hold_their_level(planted):
    """A share of 20 generated images (or of the 10-image dataset) comes with a 95 % interval, in the table
    and as error bars in the figure; over simulated trials of 10 and of 40 images the intervals hold the true
    share about 95 % of the time, and a label no image shows still gets an interval above zero."""
    from matplotlib.container import BarContainer

    from titk.analysis import plots
    from titk.analysis.effects import personality_table
    from titk.stats import share_interval

    table = personality_table(trials_frame(planted))
    assert (table["n_generated"] == 20).all() and (table["n_dataset"] == 10).all()
    assert ((table["generated_low"] <= table["generated"]) & (table["generated"] <= table["generated_high"])).all()
    tank = table[(table["label"] == "tank top") & (table["generated"] == 0.8)].iloc[0]
    assert 0.55 < tank["generated_low"] < 0.62 and 0.91 < tank["generated_high"] < 0.95  # 16 of 20: Wilson 0.584-0.919
    assert tank["dataset_low"] < 0.3 < tank["dataset_high"] and tank["dataset_high"] - tank["dataset_low"] > 0.45  # 3 of 10
    low, high = share_interval(0, 8)
    assert low == pytest.approx(0.0, abs=1e-12) and high > 0.25  # none of 8 images: up to a third, not "0 exactly"
    assert all(math.isnan(v) for v in share_interval(0, 0))

    rng = np.random.default_rng(3)
    for n in (10, 40):
        covered = [lo <= 0.3 <= hi for lo, hi in (share_interval(k, n) for k in rng.binomial(n, 0.3, 4000))]
        assert 0.92 < np.mean(covered) < 0.985, (n, np.mean(covered))

    trials = sorted(table["trial"].unique())[:2]
    fig = plots.personality(table, "clothing", trials)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["dataset (n=10)"] + [f"trial {t} (n=20)" for t in trials]
    for container, expected in zip(bars[1:], trials):
        rows = table[(table["trial"] == expected) & (table["set"] == "clothing")]
        caps = container.errorbar.lines[2][0].get_segments()  # one vertical segment per bar: low to high
        assert np.allclose(sorted(seg[:, 1].min() for seg in caps), sorted(rows["generated_low"]))
        assert np.allclose(sorted(seg[:, 1].max() for seg in caps), sorted(rows["generated_high"]))


def test_a_parameter_that_alone_decides_the_score_is_most_important():
    rng = np.random.default_rng(1)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        lr = trial.suggest_float("train.learning_rate", 1e-4, 1e-2, log=True)
        trial.suggest_int("embedding.vectors", 1, 16)
        trial.suggest_categorical("embedding.init_text", ["woman", "person"])
        study.tell(trial, math.log10(lr) + rng.normal(0, 0.01))
    importance = param_importance(study)
    assert importance.index[0] == "train.learning_rate" and importance.iloc[0] > 0.8


def test_seed_variance_intervals(planted):
    trials = trials_frame(planted)
    table = seed_variance(trials, top=3)
    assert len(table) == 3 and list(table["seeds"]) == [3, 3, 3]
    first = table.iloc[0]
    values = np.asarray(first["values"])
    low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert (first["ci_low"], first["ci_high"]) == pytest.approx((low, high))
    best = trials.sort_values("value", ascending=False).iloc[0]["trial"]
    assert first["trial"] == best


def test_pareto_front():
    trials = pd.DataFrame({"trial": range(5), "a": [1, 2, 3, 2, 0], "b": [3, 2, 1, 1, 0]})
    front = pareto_front(trials, "a", "b")
    assert list(front["trial"]) == [0, 1, 2]
