"""Intermediate signals: a fixed part of the final suite (so intermediate and final scores share a scale), the
deterministic validation loss, and how well each signal predicts the final score (toy-world measurement)."""

import random

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import assert_one_line_error, make_images

from titk.analysis.predictiveness import describe, signal_correlations
from titk.config import TrainConfig, parse
from titk.evaluate.suite import load_suite

# ------------------------------------------------------------------------------------------- the part


def _suite(tmp_path, **over):
    spec = {"sampler": "euler", "steps": 2, "cfg": 6.0, "negative_prompt": "blurry", "width": 64, "height": 64, "seeds": [7, 3, 5],
            "prompts": [{"kind": "identity", "text": "a photo of [name]"}, {"kind": "editability", "text": "[name] on the beach"},
                        {"kind": "identity", "text": "a headshot of [name]", "seeds": [9, 8]}, {"kind": "personality", "text": "[name]"},
                        {"kind": "editability", "text": "an oil painting of [name]"}], **over}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_suite(str(path))


def test_a_part_of_a_suite_has_its_sampling_and_a_subset_of_its_items(tmp_path):
    whole = _suite(tmp_path)
    part = whole.subset(1)  # the default: every prompt at its first seed
    assert part.spec == whole.spec and part.sha256 == whole.sha256  # sampler, steps, cfg, size, negative prompt
    assert set(part.items) <= set(whole.items)
    assert part.items == [(0, "a photo of [name]", "identity", 7), (1, "[name] on the beach", "editability", 7),
                          (2, "a headshot of [name]", "identity", 9), (3, "[name]", "personality", 7), (4, "an oil painting of [name]", "editability", 7)]
    two = whole.subset(2, per_kind=1)  # the first prompt of each kind, its first two seeds as listed
    assert two.items == [(0, "a photo of [name]", "identity", 7), (0, "a photo of [name]", "identity", 3),
                         (1, "[name] on the beach", "editability", 7), (1, "[name] on the beach", "editability", 3),
                         (3, "[name]", "personality", 7), (3, "[name]", "personality", 3)]
    assert two.prompt_indices == [0, 1, 3] and "first 2 seeds, first 1 prompt per kind" in two.name
    assert whole.subset(10).items == whole.items


@pytest.mark.parametrize("quick, whole", [("quick", "person"), ("toy-quick", "toy")])
def test_the_quick_suites_are_parts_of_the_full_ones(quick, whole):
    """Kept for a quick `titk eval`: their images are images of the full suite, so their scores share its scale."""
    small, big = load_suite(quick), load_suite(whole)
    assert small.spec.model_dump(exclude={"seeds", "prompts"}) == big.spec.model_dump(exclude={"seeds", "prompts"})
    assert {item[1:] for item in small.items} <= {item[1:] for item in big.items}


def test_an_old_intermediate_suite_setting_says_what_replaced_it(tmp_path, run_cli):
    make_images(tmp_path / "data", 4)
    config = {"study": "old", "base": {"model": {"source": "toyworld"}, "embedding": {"name": "ohwx"}, "data": {"path": str(tmp_path / "data")}},
              "objective": {"pruner": "median", "intermediate_suite": "quick"}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli("sweep", tmp_path / "sweep.yaml", "-w", tmp_path / "work")
    assert_one_line_error(code, err, "sweep.yaml: objective: intermediate_suite is gone", "intermediate: {seeds: 1")
    assert not (tmp_path / "work").exists()


def test_the_part_scores_each_image_as_the_whole_suite_does(sd1, tmp_path):
    """The same embedding scored on the part and on the whole suite: the same images and per-image values."""
    from titk.config import EvalSettings
    from titk.embeddings import Embedding
    from titk.evaluate.evaluator import build_evaluator, load_references

    prompts = [{"kind": "identity", "text": "a photo of [name]"}, {"kind": "editability", "text": "[name] on the beach", "seeds": [4, 3]}]
    whole = _suite(tmp_path, sampler="dpm++2m", negative_prompt="", width=None, height=None, seeds=[7, 3], prompts=prompts)
    settings = parse(EvalSettings, {"suite": str(tmp_path / "suite.yaml"), "scorers": ["clip", "norms"], "clip": {"pretrained": None}}, "t")
    evaluator = build_evaluator(sd1, settings, load_references(make_images(tmp_path / "refs", 2), 64))
    embedding = Embedding("ohwx", {"clip_l": torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 0.1})
    full = evaluator.evaluate(embedding)
    part = evaluator.evaluate(embedding, suite=whole.subset(1))
    keys = ["prompt_index", "seed"]
    joined = part.table.merge(full.table, on=keys, suffixes=("", "_full"))
    assert list(joined["seed"]) == [7, 4] and len(full.table) == 4
    index = {tuple(k): i for i, k in enumerate(full.table[keys].itertuples(index=False))}
    for i, key in enumerate(part.table[keys].itertuples(index=False)):  # generated in batches of another composition:
        a, b = np.asarray(part.images[i], dtype=int), np.asarray(full.images[index[tuple(key)]], dtype=int)
        assert np.abs(a - b).max() <= 1  # the same image up to float rounding
    # and CLIP embeds them in other batches too: the same values up to what a pixel of rounding moves
    for column in ("clip_t", "clip_i"):
        assert np.allclose(joined[column], joined[f"{column}_full"], rtol=0, atol=1e-3)
    assert part.summary["clip_t"] == pytest.approx(joined["clip_t_full"].mean(), abs=1e-3)  # the same mean over fewer images


# ------------------------------------------------------------------------------------ validation loss


def _train(tmp_path, sd1, images, name, validate_every, **train):
    from titk.train.loop import train as run

    settings = {"batch_size": 2, "grad_accum": 1, "max_steps": 6, "learning_rate": "0.02", **train}
    config = parse(TrainConfig, {
        "model": {"source": "m"}, "embedding": {"name": "ohwx", "vectors": 2, "init_text": "person"}, "data": {"path": str(images), "caption_extension": ".txt"},
        "train": settings, "output": {"dir": str(tmp_path / name), "save_every": 0, "preview": {"every": 0}},
    }, "test")
    events = {}
    result = run(config, bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache", validate_every=validate_every,
                 callback=lambda e: events.__setitem__(e.step, e.validation_loss) if e.kind == "update" else None)
    return result, events


@pytest.mark.parametrize("semantics", ["a1111", "kohya"])
def test_validation_loss_leaves_training_unchanged(sd1, tmp_path, semantics):
    """Computed every 2 steps or never, the same vectors are trained (kohya: with its whole-matrix clipping)."""
    images = make_images(tmp_path / "data", 4, captions="ohwx, photo {i}")
    extra = {"semantics": semantics, **({"clip_mode": "norm", "clip_threshold": "0.01"} if semantics == "kohya" else {})}
    with_validation, events = _train(tmp_path, sd1, images, "on", 2, **extra)
    without, quiet = _train(tmp_path, sd1, images, "off", 0, **extra)
    assert [step for step, loss in events.items() if loss is not None] == [2, 4]  # not in the last stretch: the final scores cover it
    assert all(loss is None for loss in quiet.values())
    for key, vectors in with_validation.embedding.vectors.items():
        assert torch.equal(vectors, without.embedding.vectors[key])
    assert with_validation.losses == without.losses


def test_validation_loss_depends_on_the_vectors_only(sd1, tmp_path):
    """A learning rate too small to move a float32 vector: the vectors stay the initial ones, so every
    validation, at any step and under any training seed or global random state, gives one number."""
    images = make_images(tmp_path / "data", 4, captions="ohwx, photo {i}")
    still = {}
    for seed in (0, 1):
        torch.manual_seed(seed + 100)
        random.seed(seed)
        result, events = _train(tmp_path, sd1, images, f"still-{seed}", 2, learning_rate="1e-30", seed=seed)
        still[seed] = events
    values = [loss for events in still.values() for loss in events.values() if loss is not None]
    assert len(values) == 4 and values[0] == values[1] and values[2] == values[3]  # within a run: bit for bit
    assert values[2] == pytest.approx(values[0], rel=1e-6, abs=0)  # across runs: up to the CPU kernels' float rounding
    _, moving = _train(tmp_path, sd1, images, "moving", 2, learning_rate="0.05")
    assert abs(moving[2] - values[0]) > 1e-4  # and the vectors matter


# --------------------------------------------------------------------------------------- rank correlation


def test_signal_correlations_rank_complete_trials_with_losses_negated():
    trials = pd.DataFrame({"trial": [0, 1, 2, 3, 4, 5], "value": [0.1, 0.2, 0.3, 0.4, 0.9, 0.5],
                           "state": ["COMPLETE"] * 4 + ["PRUNED", "COMPLETE"], "duplicate_of": [None] * 5 + [2.0]})
    rows = []
    for trial, final in zip(range(4), (0.1, 0.2, 0.3, 0.4)):
        rows += [(trial, "intermediate/objective", 10, final), (trial, "intermediate/objective", 20, -final),
                 (trial, "validation.loss", 10, 1 - final), (trial, "train.loss", 10, 1.0), (trial, "identity.similarity", 30, final)]
    rows += [(4, "intermediate/objective", 10, 5.0), (5, "intermediate/objective", 10, 5.0)]  # pruned, duplicate: not counted
    curves = pd.DataFrame(rows, columns=["trial", "metric", "step", "value"])
    table = signal_correlations(curves, trials)
    got = {(r.signal, r.step): (r.trials, r.spearman) for r in table.itertuples()}
    assert got[("intermediate/objective", 10)] == (4, pytest.approx(1.0))
    assert got[("intermediate/objective", 20)] == (4, pytest.approx(-1.0))
    assert got[("validation.loss", 10)] == (4, pytest.approx(1.0))  # lower loss, higher final score: positive
    assert np.isnan(got[("train.loss", 10)][1])  # a constant signal ranks nothing
    assert "identity.similarity" not in set(table["signal"])  # the final score is not a signal
    assert describe(table)[0].startswith("intermediate/objective at step 20: ρ = -1.00")
    few = signal_correlations(curves[curves["trial"] < 2], trials)
    assert few["spearman"].isna().all() and set(few["trials"]) == {2}


def test_in_the_toy_world_the_intermediate_score_predicts_the_final_one(tmp_path, one_thread):
    """A small study with pruning off (5 trials of 9 steps: learning rates 1e-4 to 0.01, init texts of
    look-alikes and of strangers; the first trial is the baseline, 3 seeds): the rank correlation of each
    intermediate signal with the final objective is computed and printed, and the intermediate objective at
    the last intermediate step ranks the trials as the final objective does."""
    from titk.analysis import load_study
    from titk.config import load_sweep_config
    from titk.sweep.runner import run_sweep
    from titk.toyworld.world import heldout, write_dataset

    write_dataset(tmp_path / "data", heldout(0), 4)
    suite = {"sampler": "dpm++2m", "steps": 5, "cfg": 5.0, "seeds": [1, 2, 3],
             "prompts": [{"kind": "identity", "text": "a photo of [name]"}, {"kind": "identity", "text": "a close-up photo of [name]"}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    # Init texts: names of pretrained people (two tokens each, so the two vectors start as exactly that name):
    # two whose samples hardly look like the subject untrained (about 0.1) and three that do (about 0.5). A few
    # steps of a learning rate alone would leave the trials within sampling noise of each other (docs/metrics.md).
    trials = [(0.003, "munizo"), (0.0001, "sunido"), (0.01, "bexasu"), (0.001, "hanifi"), (0.005, "kajevo")]
    config = {
        "study": "signals",
        "base": {"model": {"source": "toyworld", "dtype": "fp32"}, "embedding": {"name": "ohwx", "vectors": 2, "init_text": "person"},
                 "data": {"path": str(tmp_path / "data"), "template": "titk-subject", "width": 64, "height": 64},
                 "train": {"semantics": "a1111", "batch_size": 1, "grad_accum": 1, "max_steps": 9, "learning_rate": "0.01"},
                 "output": {"save_every": 0}},
        "space": {"train.learning_rate": {"low": 0.0001, "high": 0.01, "log": True},
                  "embedding.init_text": {"choice": sorted({text for _, text in trials})}},
        "enqueue": [{"train.learning_rate": lr, "embedding.init_text": text} for lr, text in trials],
        "n_trials": len(trials), "confirm": {"top": 0},
        "objective": {"metrics": {"identity.similarity": 1.0}, "floors": {}, "pruner": "none", "eval_every": 3},
        "evaluation": {"world": "toyworld", "suite": str(tmp_path / "suite.yaml"), "scorers": ["identity"], "batch_size": 8},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    run_sweep(load_sweep_config(tmp_path / "sweep.yaml"), workdir=tmp_path / "work", show_progress=False)
    data = load_study(tmp_path / "work")
    table = signal_correlations(data.curves(), data.trials)
    print("\nfinal objective by trial:", data.trials.set_index("trial")["value"].round(3).to_dict())
    print(table.to_string(index=False))
    print("\n".join(describe(table)))
    assert set(table["signal"]) >= {"intermediate/objective", "intermediate/identity.similarity", "validation.loss", "train.loss"}
    scores = table[table["signal"] == "intermediate/objective"].set_index("step")
    assert list(scores.index) == [3, 6] and (scores["trials"] == 5).all()
    assert scores.loc[6, "spearman"] > 0
    assert set(table.loc[table["signal"] == "validation.loss", "step"]) == {3, 6}  # beside the intermediate scores
