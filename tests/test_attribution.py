"""Per-image attribution: the regression on inclusion indicators recovers planted effects with intervals
that cover the truth, in both subset modes; and in the toy world it finds planted bad images."""

import math

import numpy as np
import pandas as pd
import pytest

from titk.analysis import image_attribution
from titk.config import load_sweep_config
from titk.sweep.runner import run_sweep
from titk.sweep.trials import measured
from titk.toyworld.planted import found, write_planted_study

P = 15
IMAGES = [f"{i:03d}.png" for i in range(P)]


def frame(x: np.ndarray, y: np.ndarray, **extra) -> pd.DataFrame:
    """A trials frame as trials_frame gives it: one row per trial, its subset and its value."""
    rows = [{"trial": t, "state": "COMPLETE", "duplicate_of": None, "value": float(v),
             "subset": [IMAGES[j] for j in np.flatnonzero(row)]} for t, (row, v) in enumerate(zip(x, y))]
    table = pd.DataFrame(rows)
    for name, values in extra.items():
        table[name] = values
    return table


def fixed_size(rng, n: int, size: int = 8) -> np.ndarray:
    x = np.zeros((n, P))
    for row in x:
        row[rng.choice(P, size, replace=False)] = 1
    return x


def flags(rng, n: int) -> np.ndarray:
    return (rng.random((n, P)) < 0.5).astype(float)


def relative(b: np.ndarray) -> np.ndarray:
    """What fixed-size subsets can tell: each image's effect minus the mean effect of the others."""
    return b - (b.sum() - b) / (len(b) - 1)


PLANTED = np.r_[[-0.15] * 3, np.linspace(-0.02, 0.02, P - 3)]  # images 000-002 are bad


@pytest.mark.parametrize("mode", ["fixed size", "include flags"])
def test_planted_effects_are_recovered_and_ranked_worst_first(mode):
    rng = np.random.default_rng(0)
    x = fixed_size(rng, 40) if mode == "fixed size" else flags(rng, 40)
    y = 0.6 + x @ PLANTED + rng.normal(0, 0.03, len(x))
    table = image_attribution(frame(x, y), "value").set_index("image")
    truth = pd.Series(relative(PLANTED) if mode == "fixed size" else PLANTED, IMAGES)
    assert table["method"].iloc[0] == ("ols, fixed size" if mode == "fixed size" else "ols")
    assert set(table.index[:3]) == set(IMAGES[:3]) and (table.loc[IMAGES[:3], "ci_high"] < 0).all()
    assert np.abs(table["effect"] - truth[table.index]).max() < 4 * table["se"].max()
    assert (table["n_in"] + table["n_out"] == 40).all() and (table["note"] == "").all()
    assert table.attrs["dof"] == 40 - P - (mode != "fixed size") and table.attrs["trials"] == 40


@pytest.mark.parametrize("mode", ["fixed size", "include flags"])
def test_intervals_cover_the_truth_at_their_stated_rate(mode):
    """Over 200 simulated studies of 30 trials, the 95 % intervals hold the true effect about 95 % of the time
    (3000 intervals: the rate's binomial standard error is 0.004)."""
    rng = np.random.default_rng(1)
    truth = relative(PLANTED) if mode == "fixed size" else PLANTED
    covered = []
    for _ in range(200):
        x = fixed_size(rng, 30) if mode == "fixed size" else flags(rng, 30)
        table = image_attribution(frame(x, 0.5 + x @ PLANTED + rng.normal(0, 0.05, len(x))), "value").set_index("image").loc[IMAGES]
        covered += list((table["ci_low"] <= truth) & (truth <= table["ci_high"]))
    assert 0.925 < np.mean(covered) < 0.975
    # a 50 % interval covers about half the time: the width follows the level
    trials = frame(x, 0.5 + x @ PLANTED + rng.normal(0, 0.05, len(x)))
    width = {level: (t["ci_high"] - t["ci_low"]).to_numpy() for level in (0.5, 0.95)
             for t in [image_attribution(trials, "value", level=level).set_index("image").loc[IMAGES]]}
    assert (width[0.5] < 0.5 * width[0.95]).all()


def test_fixed_size_effects_are_relative_to_the_other_images():
    """With every subset the same size, adding a constant to every image's effect changes every trial by the
    same amount: the estimates do not move (only differences between images are identified), and they are
    the planted effects minus the mean of the others, not the planted effects themselves."""
    rng = np.random.default_rng(2)
    x = fixed_size(rng, 30)
    noise = rng.normal(0, 0.001, len(x))
    a = image_attribution(frame(x, x @ PLANTED + noise), "value").set_index("image")
    b = image_attribution(frame(x, x @ (PLANTED + 0.3) + noise), "value").set_index("image")
    assert np.allclose(a["effect"], b["effect"].loc[a.index]) and np.allclose(a["se"], b["se"].loc[a.index])
    # not the centred coefficients (b - mean of all b), which differ from these by 0.009 for the bad images
    assert np.allclose(a["effect"], pd.Series(relative(PLANTED), IMAGES)[a.index], atol=0.003)
    assert a["ci_low"].notna().all() and a["method"].iloc[0] == "ols, fixed size"


def test_leave_one_out_with_and_without_the_all_images_trial():
    rng = np.random.default_rng(3)
    out = np.ones((3 * P, P)) - np.tile(np.eye(P), (3, 1))  # each image left out three times
    every = np.ones((4, P))
    x = np.vstack([out, every])
    y = 0.6 + x @ PLANTED + rng.normal(0, 0.01, len(x))
    table = image_attribution(frame(x, y), "value").set_index("image")
    assert table["method"].iloc[0] == "ols"  # the all-images trials give the sizes a spread: the intercept
    assert np.abs(table["effect"] - pd.Series(PLANTED, IMAGES)[table.index]).max() < 0.03
    assert (table.loc[IMAGES[:3], "ci_high"] < 0).all()
    only_out = image_attribution(frame(out, y[: len(out)]), "value")
    assert only_out["method"].iloc[0] == "ols, fixed size" and set(only_out["image"][:3]) == set(IMAGES[:3])


def test_too_few_trials_give_effects_without_intervals_and_say_why():
    rng = np.random.default_rng(4)
    x = fixed_size(rng, P + 1)  # one trial short of the 17 a regression on 15 images needs
    table = image_attribution(frame(x, x @ PLANTED), "value")
    assert table["effect"].notna().all() and table["ci_low"].isna().all() and table["se"].isna().all()
    assert (table["method"] == "difference of means").all()
    assert table.attrs["note"] == f"{P + 1} trials; a regression on {P} images needs at least {P + 2} for intervals"
    assert (table["note"] == table.attrs["note"]).all()
    x = fixed_size(rng, P + 2)
    assert image_attribution(frame(x, x @ PLANTED + rng.normal(0, 0.01, len(x))), "value")["ci_low"].notna().all()


def test_images_the_subsets_cannot_tell_apart():
    rng = np.random.default_rng(5)
    x = flags(rng, 40)
    x[:, 1] = x[:, 0]  # 000 and 001 always trained together
    x[:, 14], x[:, 13] = 1, 0  # 014 in every trial, 013 in none
    table = image_attribution(frame(x, x @ PLANTED + rng.normal(0, 0.01, len(x))), "value", IMAGES).set_index("image")
    assert "do not tell some images apart" in table.attrs["note"] and table["ci_low"].isna().all()
    assert table.loc["014.png", "note"] == "in every trial" and table.loc["013.png", "note"] == "in no trial"
    assert math.isnan(table.loc["014.png", "effect"]) and list(table.index[-2:]) == ["013.png", "014.png"]


def test_the_figure_draws_each_interval_or_says_why_there_are_none():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import LineCollection

    from titk.analysis import plots

    rng = np.random.default_rng(7)
    x = fixed_size(rng, 30)
    table = image_attribution(frame(x, 0.6 + x @ PLANTED + rng.normal(0, 0.02, len(x))), "value")
    ax = plots.attribution(table, "value").axes[0]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    spans = sorted(tuple(np.round(sorted(seg[:, 0]), 9)) for seg in bars[0].get_segments())
    assert spans == sorted(tuple(np.round(v, 9)) for v in zip(table["ci_low"], table["ci_high"]))
    top = max(zip(ax.get_yticks(), ax.get_yticklabels()), key=lambda t: t[0])[1]
    assert top.get_text() == table["image"][0]  # worst at the top
    assert "95% CI, 30 trials" in ax.get_title()
    few = image_attribution(frame(x[:10], x[:10] @ PLANTED), "value")
    ax = plots.attribution(few, "value").axes[0]
    assert not [c for c in ax.collections if isinstance(c, LineCollection)] and few.attrs["note"] in ax.get_title()


def test_only_trained_complete_trials_count():
    rng = np.random.default_rng(6)
    x = fixed_size(rng, 30)
    y = 0.6 + x @ PLANTED + rng.normal(0, 0.01, len(x))
    table = frame(x, y)
    extra = frame(x[:6], y[:6] + 5.0)  # copies of measured trials and pruned ones carry no new measurement
    extra["duplicate_of"] = [0, 1, 2, None, None, None]
    extra["state"] = ["COMPLETE"] * 3 + ["PRUNED"] * 3
    both = image_attribution(pd.concat([table, extra], ignore_index=True), "value")
    assert both.attrs["trials"] == 30
    pd.testing.assert_frame_equal(both, image_attribution(table, "value"))


def test_subsets_of_one_size_put_every_image_in_as_many_trials():
    """A sweep's subsets of one size come from shuffled passes over the dataset: after m passes every image
    has been in m trials, so attribution is as sure of every image; independent random subsets of the same
    trials leave some images in few and their intervals wide."""
    from titk.sweep.space import balanced_subset

    subsets = [balanced_subset(P, 2, 0, t) for t in range(30)]  # 4 passes over 15 images
    assert all(len(set(s)) == 2 and max(s) < P for s in subsets)
    assert np.bincount([i for s in subsets for i in s], minlength=P).tolist() == [4] * P
    assert subsets == [balanced_subset(P, 2, 0, t) for t in range(30)] != [balanced_subset(P, 2, 1, t) for t in range(30)]
    # trials that run from one pass into the next (most of them, at 10 of 12) still get 10 different images
    tens = [balanced_subset(12, 10, 3, t) for t in range(12)]  # 10 passes
    assert all(len(set(s)) == 10 for s in tens)
    assert np.bincount([i for s in tens for i in s], minlength=12).tolist() == [10] * 12

    rng = np.random.default_rng(2)
    balanced = np.zeros((30, P))
    for row, s in zip(balanced, subsets):
        row[s] = 1
    widest = {}
    for name, x in (("balanced", balanced), ("random", fixed_size(rng, 30, size=2))):
        table = image_attribution(frame(x, 0.5 + x @ PLANTED + rng.normal(0, 0.05, 30)), "value")
        widest[name] = (table["ci_high"] - table["ci_low"]).max()
    assert widest["balanced"] < 0.8 * widest["random"]


def test_in_the_toy_world_a_sweep_finds_the_planted_intruders(tmp_path):
    """Ground truth: 3 of 15 images show another person, captioned as the subject (titk.toyworld.planted).
    A real sweep of 30 trials on balanced pairs (each image in 4 trials) must rank those three lowest, each
    with a 95 % interval below zero. Measured: from 25 trials on in a 48-trial run (docs/metrics.md); with
    independent random pairs instead of balanced ones, not found within 48."""
    config = load_sweep_config(write_planted_study(tmp_path, 30))
    result = run_sweep(config, workdir=tmp_path / "work", show_progress=False)
    done = measured(result.table)
    assert len(done) == 30
    table = image_attribution(done, "value", IMAGES)
    assert found(table), table[["image", "n_in", "effect", "ci_low", "ci_high"]].to_string()
    assert table.attrs["method"] == "ols, fixed size" and (table["n_in"] == 4).all()
