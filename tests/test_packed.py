"""Packed trials: several embeddings trained on one frozen model at once, one UNet call per micro-batch step,
each equal to its own run."""

import pytest
import torch
from helpers import make_images

from titk.config import TrainConfig, parse
from titk.train.loop import Job, train, train_together


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("faces"), 6, captions="ohwx, photo {i}")


def cfg(out, images, **train_over):
    embedding = {"name": "ohwx", "vectors": train_over.pop("vectors", 2), "init_text": "person"}
    return parse(TrainConfig, {
        "model": {"source": "m", "dtype": "fp32"},
        "embedding": embedding,
        "data": {"path": str(images), "caption_extension": ".txt"},
        "train": {"batch_size": 2, "grad_accum": 1, "max_steps": 5, "learning_rate": "0.01", **train_over},
        "output": {"dir": str(out), "save_every": 0, "preview": {"every": 0}},
    }, "test")


# Different rates, vector counts, seeds, batch sizes, accumulation, lengths and semantics: each job its own.
SETTINGS = [
    {"learning_rate": "0.02"},
    {"learning_rate": "0.005", "vectors": 3, "seed": 7, "grad_accum": 2},
    {"learning_rate": "0.01:2, 0.003", "batch_size": 3, "max_steps": 3},
    {"semantics": "kohya", "learning_rate": "0.01", "clip_mode": "norm", "clip_threshold": "0.5", "seed": 3},
]


def test_packed_jobs_equal_their_own_runs(tmp_path, images, sd1):
    configs = [cfg(tmp_path / f"packed-{i}", images, **s) for i, s in enumerate(SETTINGS)]
    calls = []
    real = sd1.unet.forward
    sd1.unet.forward = lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw)
    try:
        packed = train_together([Job(c, latent_cache=tmp_path / "cache") for c in configs], bundle=sd1, show_progress=False)
    finally:
        del sd1.unet.forward
    # Per update, one micro-batch of each job (2 + 2 + 3 + 2 images) and the second of the one accumulating
    # two; after step 3, without the job of 3 steps.
    assert calls == [9, 2] * 3 + [6, 2] * 2
    assert len({float(r.embedding.vectors["clip_l"][0, 0]) for r in packed}) == 4
    for i, s in enumerate(SETTINGS):
        alone = train(cfg(tmp_path / f"alone-{i}", images, **s), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
        assert packed[i].steps_done == alone.steps_done == s.get("max_steps", 5)
        torch.testing.assert_close(packed[i].losses, alone.losses, rtol=1e-4, atol=1e-6)
        # Rounding differs between a batch of 9 and one of 2; Adam moves each element by up to the rate (1e-2).
        torch.testing.assert_close(packed[i].embedding.vectors, alone.embedding.vectors, rtol=1e-3, atol=1e-4)
        assert (tmp_path / f"packed-{i}" / "ohwx.pt").is_file()
    assert sd1.encoders[0].spliced.extra is None


def test_a_stopped_job_leaves_the_others_as_they_were(tmp_path, images, sd1, monkeypatch):
    """A pruned trial (its callback raises), a diverged one and one that cannot start end alone."""
    import titk.train.loop as loop

    real = loop.denoising_losses

    def nan_for_batches_of_three(bundle, parts):  # the diverging job is the one training batches of 3
        return [loss * float("nan") if len(p.latents) == 3 else loss for loss, p in zip(real(bundle, parts), parts)]

    monkeypatch.setattr(loop, "denoising_losses", nan_for_batches_of_three)

    class Pruned(Exception):
        pass

    def prune_at_two(event):
        if event.step == 2:
            raise Pruned("pruned at step 2")

    diverging = cfg(tmp_path / "nan", images, batch_size=3)
    missing = cfg(tmp_path / "missing", images).model_copy(update={"data": cfg(tmp_path, images).data.model_copy(update={"path": tmp_path / "nowhere"})})
    jobs = [Job(cfg(tmp_path / "pruned", images), callback=prune_at_two, latent_cache=tmp_path / "cache"),
            Job(cfg(tmp_path / "kept", images, learning_rate="0.02"), latent_cache=tmp_path / "cache"),
            Job(diverging, latent_cache=tmp_path / "cache"), Job(missing)]
    pruned, kept, diverged, failed = train_together(jobs, bundle=sd1, show_progress=False)
    assert isinstance(pruned, Pruned) and not (tmp_path / "pruned" / "ohwx.pt").exists()
    assert "loss became nan at step 1" in str(diverged) and "nowhere" in str(failed)
    alone = train(cfg(tmp_path / "alone", images, learning_rate="0.02"), bundle=sd1, show_progress=False, latent_cache=tmp_path / "cache")
    torch.testing.assert_close(kept.embedding.vectors, alone.embedding.vectors, rtol=1e-3, atol=1e-4)
    assert kept.steps_done == 5 and kept.peak_memory is None  # GPU memory is reported on a GPU only


# ------------------------------------------------------------------------------------------- in a sweep

THREE = [{"train.learning_rate": 0.05, "embedding.vectors": 2}, {"train.learning_rate": 0.02, "embedding.vectors": 3},
         {"train.learning_rate": 0.00001, "embedding.vectors": 1}]


def _sweep(tmp_path, fixtures, **over):
    from helpers import write_sweep_config

    from titk.config import load_sweep_config
    from titk.sweep.runner import run_sweep

    path = write_sweep_config(tmp_path, fixtures, n_trials=3, enqueue=THREE, **over)
    return run_sweep(load_sweep_config(path), workdir=tmp_path / "work", show_progress=False).study


def test_a_packed_sweep_gives_each_trial_what_it_gives_alone(tmp_path, fixtures, monkeypatch):
    """The baseline (3 seeds) and two trials, asked for together and trained together, against the same
    study one trial at a time: the same objective and per-seed values, every run closed."""
    import titk.train.loop as loop
    from optuna.trial import TrialState

    real, together = loop.denoising_losses, []

    def spy(bundle, parts):
        together.append(len(parts))
        return real(bundle, parts)

    monkeypatch.setattr(loop, "denoising_losses", spy)
    packed = _sweep(tmp_path / "packed", fixtures, pack=3, objective__pruner="none")
    assert together == [3] * 6 + [1] * 12  # 6 steps of the three, then the baseline's second and third seeds alone
    together.clear()
    alone = _sweep(tmp_path / "alone", fixtures, objective__pruner="none")
    assert set(together) == {1}
    assert [t.state for t in packed.trials] == [TrialState.COMPLETE] * 3
    for p, a in zip(packed.trials, alone.trials):
        assert p.params == a.params
        assert p.value == pytest.approx(a.value, rel=1e-4)
        assert p.user_attrs["values_per_seed"] == pytest.approx(a.user_attrs["values_per_seed"], rel=1e-4)
        assert p.user_attrs["titk.run_closed"]
    assert len(packed.trials[0].user_attrs["values_per_seed"]) == 3  # the baseline's seeds


def test_a_pruned_trial_leaves_its_group(tmp_path, fixtures):
    """Successive halving at step 2: the trial at the lowest rate (the smallest norms) stops there, its group
    trains on."""
    from optuna.trial import TrialState

    study = _sweep(tmp_path, fixtures, pack=3, objective__pruner="halving")
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.COMPLETE and states[2] == TrialState.PRUNED
    assert study.trials[2].user_attrs["titk.pruned"]["step"] == 2


def test_ctrl_c_in_a_packed_sweep_stops_every_trial_of_the_group_and_they_are_retried(tmp_path, fixtures, monkeypatch):
    import titk.train.loop as loop
    from optuna.trial import TrialState

    real = loop.train_together

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_together", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, fixtures, pack=3, objective__pruner="none")
    monkeypatch.setattr(loop, "train_together", real)
    study = _sweep(tmp_path, fixtures, pack=3, objective__pruner="none")  # the same command again
    stopped, retried = study.trials[:3], study.trials[3:]
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted" for t in stopped)
    assert [t.state for t in retried] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs["retry_of"] for t in retried] == [0, 1, 2] and [t.params for t in retried] == [t.params for t in stopped]
