"""The LR schedule grammar and stop rule, batching under both semantics, and the plan's numbers."""

from pathlib import Path

import pytest
from helpers import make_images

from titk.config import TrainConfig, load_train_config, parse
from titk.data.dataset import scan_dataset
from titk.errors import TitkError
from titk.train.plan import make_plan
from titk.train.schedule import Schedule, parse_schedule
from titk.train.batching import A1111Batching, KohyaBatching

RECIPES = Path(__file__).resolve().parents[1] / "experiments" / "recipes"


@pytest.fixture(scope="module")
def ds15(tmp_path_factory):
    return scan_dataset(make_images(tmp_path_factory.mktemp("ds15"), 15))


@pytest.fixture(scope="module")
def ds30(tmp_path_factory):
    return scan_dataset(make_images(tmp_path_factory.mktemp("ds30"), 30))


def config(**train) -> TrainConfig:
    return parse(TrainConfig, {"model": {"source": "m"}, "embedding": {"name": "ohwx"}, "data": {"width": 512, "height": 512}, "train": train}, "test")


# ----------------------------------------------------------------------------------------------- grammar


def test_schedule_pairs_follow_a1111():
    assert parse_schedule("0.005:100, 1e-3:1000", 200) == [(0.005, 100), (0.001, 200)]
    assert parse_schedule("0.005:100, 1e-3:1000", 3000) == [(0.005, 100), (0.001, 1000)]
    assert parse_schedule("0.005", 3000) == [(0.005, 3000)]
    assert parse_schedule("1e-3:-1, 5:10", 500) == [(0.001, 500)]  # -1 ends the parse
    assert parse_schedule("0.01:10, 0.005, 0.1:20", 50) == [(0.01, 10), (0.005, 50)]  # a bare rate ends it too
    assert parse_schedule("0.005:100, 1e-3:1000", 3000, cur_step=100) == [(0.001, 1000)]  # resumed: passed entries dropped
    assert parse_schedule("0.005:100,, 1e-3:1000,", 3000) == [(0.005, 100), (0.001, 1000)]  # empty pieces skipped
    assert parse_schedule(0.005, 10) == [(0.005, 10)]


@pytest.mark.parametrize("bad", ["abc", "0.1:x", "x:2:3", "0.1:10, oops", "-0.1", "0"])
def test_invalid_schedules_are_one_clear_error(bad):
    with pytest.raises(TitkError, match="learning_rate"):
        parse_schedule(bad, 100)


def test_schedule_advances_one_entry_per_check_and_finishes():
    s = Schedule.from_string("0.005:2, 1e-3:4", 10)
    rates = [s.apply(step) for step in range(5)]
    assert rates[:4] == [0.005, 0.005, 0.001, 0.001] and s.finished


def test_a_schedule_ending_before_max_steps_stops_training(ds15):
    plan = make_plan(config(batch_size=3, grad_accum=15, max_steps=3000, learning_rate="0.005:100, 1e-3:1000"), ds15)
    assert plan.stop_step == 1000
    assert plan.lr_segments == [(0.005, 0, 100), (0.001, 100, 1000)]
    assert any("stops there" in w for w in plan.warnings)


def test_a_piece_with_two_colons_is_read_as_a1111_reads_it(ds15):
    # LearnScheduleIterator: a piece that does not split into exactly two parts is a bare rate, until max steps
    assert parse_schedule("0.005:100:200", 300) == [(0.005, 300)]
    assert parse_schedule("0.01:10, 0.005:100:200, 0.001:300", 300) == [(0.01, 10), (0.005, 300)]
    plan = make_plan(config(batch_size=3, grad_accum=5, max_steps=300, learning_rate="0.01:10, 0.005:100:200"), ds15)
    assert plan.lr_segments == [(0.01, 0, 10), (0.005, 10, 300)] and plan.stop_step == 300
    assert any("'0.005:100:200' has two colons; A1111 reads it as the bare rate 0.005" in w for w in plan.warnings)


def test_repeated_end_step_with_accumulation_counts_only_the_updates_made(ds15):
    # 15 images, BS 3, GA 5: one update = one pass of 15 images. Steps 0-49 train at 0.01. At step 50 the first
    # micro-batch's check moves to (0.005, 50) and computes 3 images; the second check finds no entry left
    # and stops A1111 before the update: 50 updates, 50 × 15 = 750 image views (not 753).
    plan = make_plan(config(batch_size=3, grad_accum=5, max_steps=100, learning_rate="0.01:50, 0.005:50"), ds15)
    assert (plan.stop_step, plan.image_views) == (50, 750)
    assert plan.lr_segments == [(0.01, 0, 50)]


def test_repeated_end_step_without_accumulation_trains_one_more_update_at_the_next_rate(ds15):
    # BS 3, GA 1: 5 updates per pass. At step 50 the one micro-batch moves to (0.005, 50) and is an update:
    # A1111 makes step 51 at 0.005, then stops. 51 × 3 = 153 views.
    plan = make_plan(config(batch_size=3, grad_accum=1, max_steps=100, learning_rate="0.01:50, 0.005:50"), ds15)
    assert (plan.stop_step, plan.image_views) == (51, 153)
    assert plan.lr_segments == [(0.01, 0, 50), (0.005, 50, 51)]


def test_an_update_takes_the_rate_set_before_its_last_micro_batch(ds15):
    # Step 50, GA 5: the first check moves to (0.005, 40), the second (50 >= 40) to (0.001, 100); the optimizer
    # steps with 0.001. No update is made at 0.005.
    plan = make_plan(config(batch_size=3, grad_accum=5, max_steps=100, learning_rate="0.01:50, 0.005:40, 0.001:100"), ds15)
    assert plan.lr_segments == [(0.01, 0, 50), (0.001, 50, 100)] and (plan.stop_step, plan.image_views) == (100, 1500)


def test_a1111_caps_its_passes_at_max_steps_times_ga(ds15):
    # BS 15, GA 1: one update per pass, and A1111's outer loop runs (max steps − 0) × GA = 500 passes at most,
    # so the bare rate's repeated end step 500 gives no step 501.
    plan = make_plan(config(batch_size=15, max_steps=500, learning_rate="0.005:500, 0.001"), ds15)
    assert (plan.max_passes, plan.stop_step, plan.image_views) == (500, 500, 7500)
    assert plan.lr_segments == [(0.005, 0, 500)]
    # BS 5: 3 updates per pass, 500 passes are 1500 updates; the extra step is made (at the last entry's rate)
    plan = make_plan(config(batch_size=5, max_steps=200, learning_rate="0.005:100, 1e-3:200, 1e-4:200"), ds15)
    assert plan.stop_step == 201 and plan.lr_segments == [(0.005, 0, 100), (0.001, 100, 200), (0.0001, 200, 201)]
    assert any("trains past max steps" in w for w in plan.warnings)
    plan = make_plan(config(batch_size=15, max_steps=200, learning_rate="0.005:100, 1e-3:200, 1e-4:200"), ds15)
    assert plan.stop_step == 200


def test_kohya_schedule_never_stops_early(ds15):
    plan = make_plan(config(semantics="kohya", batch_size=3, grad_accum=5, max_steps=300, learning_rate="0.005:100, 1e-3:150"), ds15)
    assert plan.stop_step == 300
    assert plan.lr_segments[-1] == (0.001, 100, 300)
    # a repeated end step: the loop moves to the next entry and keeps its rate to the end
    plan = make_plan(config(semantics="kohya", batch_size=3, grad_accum=5, max_steps=100, learning_rate="0.01:50, 0.005:50"), ds15)
    assert plan.lr_segments == [(0.01, 0, 50), (0.005, 50, 100)] and plan.max_passes is None


# ----------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "recipe, semantics, expect",
    [
        # (bs_eff, ga_eff, updates per pass, steps, epochs, views, divisor)
        ("a1111-15img-bs3-ga15-200steps.yaml", "a1111", (3, 5, 1, 200, 200, 3000, 5)),
        ("a1111-15img-bs3-ga15-200steps.yaml", "kohya", (3, 15, 1, 200, 200, 3000, 15)),
        ("a1111-30img-bs6-ga5-300steps.yaml", "a1111", (6, 5, 1, 300, 300, 9000, 5)),
        ("a1111-30img-bs6-ga5-300steps.yaml", "kohya", (6, 5, 1, 300, 300, 9000, 5)),
    ],
)
def test_recipes_under_both_semantics(recipe, semantics, expect, ds15, ds30):
    cfg = load_train_config(RECIPES / recipe, overrides=[f"train.semantics={semantics}"])
    plan = make_plan(cfg, ds15 if "15img" in recipe else ds30)
    got = (plan.batch_size_eff, plan.grad_accum_eff, plan.updates_per_pass, plan.stop_step, plan.epochs, plan.image_views, plan.loss_divisor)
    assert got == expect
    if recipe.startswith("a1111-15") and semantics == "a1111":
        assert any("15 → 5" in w for w in plan.warnings)
        assert any("15 images = 1 epoch" in n for n in plan.notes)
    if recipe.startswith("a1111-15") and semantics == "kohya":
        assert any("1/3 of the mean gradient" in w for w in plan.warnings)


def test_200_epochs_rule_derives_max_steps(ds30):
    cfg = load_train_config(RECIPES / "a1111-200-epochs.yaml")
    plan = make_plan(cfg, ds30)
    # 30 images, bs 3, GA 5: 10 batches per pass, 2 updates per pass
    assert (plan.updates_per_pass, plan.max_steps, plan.max_steps_from, plan.epochs) == (2, 400, "epochs", 200)


def test_kohya_repeats_give_a_short_last_update(ds15):
    cfg = config(semantics="kohya", batch_size=3, grad_accum=15, max_steps=200)
    cfg.data.repeats = 10
    plan = make_plan(cfg, ds15)
    assert (plan.micro_per_pass, plan.updates_per_pass, plan.epochs) == (50, 4, 50)
    assert plan.image_views == 200 // 4 * 150
    assert any("last update of each pass sums only 5 of 15" in w for w in plan.warnings)


def test_a1111_leftovers_are_reported(ds15):
    plan = make_plan(config(batch_size=2, grad_accum=3, max_steps=10), ds15)
    # 15 // 2 = 7 batches; GA 3 → 2 updates use 6 batches; one image sits out, one batch skipped
    assert (plan.micro_per_pass, plan.micro_used_per_pass, plan.updates_per_pass) == (7, 6, 2)
    assert any("leaves out 1 of the 15" in w for w in plan.warnings)
    assert any("skips its last 1 batch" in w for w in plan.warnings)


def test_plan_flops_match_the_measured_sd15_figure(ds15, tmp_path):
    from safetensors.torch import save_file
    import torch

    from titk.config import ModelConfig
    from titk.models.loading import read_architecture

    # A header-only stand-in for an SD1 checkpoint: planning reads key names and shapes, never weights.
    fake = tmp_path / "sd15.safetensors"
    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1, 768),
    }, str(fake))
    arch = read_architecture(ModelConfig(source=str(fake)))
    assert arch.family.value == "sd1" and arch.default_size == 512
    plan = make_plan(config(batch_size=3, grad_accum=5, max_steps=200), ds15, arch)
    assert plan.tflops_per_view == {"512x512": pytest.approx(1.669, abs=5e-4)}
    assert plan.total_tflops == pytest.approx(1.669 * 3000, rel=1e-3)


@pytest.mark.parametrize(
    "train, message",
    [
        ({"max_steps": 10, "epochs": 2}, "not both"),
        ({}, "set max_steps"),
        ({"max_steps": 10, "learning_rate": "oops"}, "invalid schedule"),
    ],
)
def test_plan_errors(ds15, train, message):
    with pytest.raises(TitkError, match=message):
        make_plan(config(**train), ds15)


def test_vector_count_and_name_are_checked(ds15):
    cfg = config(max_steps=10)
    cfg.embedding.vectors = 76
    with pytest.raises(TitkError, match="outside 1..75"):
        make_plan(cfg, ds15)
    cfg.embedding.vectors = 1
    cfg.embedding.name = "bad/name"
    with pytest.raises(TitkError, match="not a usable name"):
        make_plan(cfg, ds15)


# ----------------------------------------------------------------------------------------------- batching


def test_a1111_pass_sees_every_image_once_and_reshuffles():
    b = A1111Batching([list(range(15))], batch_size=3, grad_accum=15, seed=1)
    assert (b.batch_size, b.grad_accum, b.updates_per_pass) == (3, 5, 1)
    first, second = b.update(0), b.update(1)
    assert sorted(i for batch in first.batches for i in batch) == list(range(15))
    assert first.batches != second.batches
    assert A1111Batching([list(range(15))], 3, 15, seed=1).update(0).batches == first.batches  # deterministic


def test_a1111_multiple_size_groups_keep_batches_within_a_group():
    groups = [list(range(0, 5)), list(range(5, 10))]
    b = A1111Batching(groups, batch_size=3, grad_accum=1, seed=0)
    batches = b.pass_batches(0)
    assert len(batches) == 10 // 3
    for batch in batches:
        assert all(i < 5 for i in batch) or all(i >= 5 for i in batch)


def test_kohya_keeps_partial_batches_and_forces_an_update_at_pass_end():
    b = KohyaBatching([list(range(7))], batch_size=3, grad_accum=2, seed=0, repeats=1)
    assert (b.micro_per_pass, b.updates_per_pass) == (3, 2)
    batches = b.pass_batches(0)
    assert sorted(len(x) for x in batches) == [1, 3, 3]
    assert len(b.update(0).batches) == 2 and len(b.update(1).batches) == 1  # the short, forced update
    assert b.update(1).divisor == 2


def test_flop_counts_are_kept_in_the_cache_and_a_damaged_cache_is_counted_again(monkeypatch, tmp_path):
    """Counting a full-size model takes seconds: a second plan (another process) reads the count from titk's
    cache; a damaged cache file is counted again, never an error."""
    from titk.models.families import Family
    from titk.models.loading import shipped_architecture
    from titk.train import flops

    monkeypatch.setenv("TITK_CACHE", str(tmp_path))
    unet = shipped_architecture(Family.SD1).unet
    flops._remembered.cache_clear()
    first = flops.unet_flops_per_view(unet, 256, 256)
    assert first / 1e12 == pytest.approx(0.361, abs=0.001) and (tmp_path / "flops.json").is_file()
    flops._remembered.cache_clear()  # as a new process would start
    monkeypatch.setattr(flops, "_count", lambda *a: pytest.fail("counted again although the cache holds it"))
    assert flops.unet_flops_per_view(unet, 256, 256) == first
    (tmp_path / "flops.json").write_text("{not json")
    flops._remembered.cache_clear()
    monkeypatch.undo()
    monkeypatch.setenv("TITK_CACHE", str(tmp_path))
    assert flops.unet_flops_per_view(unet, 256, 256) == first
    flops._remembered.cache_clear()
