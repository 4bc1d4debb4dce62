"""The GPU memory estimate (titk.train.memory): counted on fake tensors, so it is tested here without a GPU; what a
GPU measures beside it comes from benchmarks/gpu_bench.py."""

import pytest
import torch

from titk.train.memory import live_bytes, step_memory

MIB = 2**20


def test_the_count_follows_storages_from_the_op_that_makes_them_until_they_are_freed():
    from torch._subclasses.fake_tensor import FakeTensorMode

    counter = live_bytes()
    with FakeTensorMode(), counter:
        a = torch.empty(1024, 1024)  # 4 MiB
        b = torch.empty(2048, 1024)  # 8 MiB
        view = b[:10]  # no new storage
        del a
        c = torch.empty(1024, 1024)
        assert counter.live == 12 * MIB
        d = torch.empty(3)  # 12 bytes take a block of 512, as in the CUDA allocator
        del view, b, c, d
    assert counter.peak == 12 * MIB + 512 and counter.live == 0  # a and c were never alive together


@pytest.fixture(scope="module")
def sd15():
    from diffusers import UNet2DConditionModel

    from titk.models.loading import shipped_config

    return dict(UNet2DConditionModel.load_config(shipped_config("sd1") / "unet"))


def test_sd15s_weights_are_its_parameters_in_the_precision_asked(sd15):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        parameters = sum(p.numel() for p in UNet2DConditionModel.from_config(sd15).parameters())
    bf16 = step_memory(sd15, 512, 512, batch=1)
    assert parameters == pytest.approx(859.5e6, rel=1e-3)
    assert bf16.weights == pytest.approx(2 * parameters, rel=0.002)  # blocks of 512 bytes and the step's inputs
    assert step_memory(sd15, 512, 512, batch=1, dtype="fp32").weights == pytest.approx(2 * bf16.weights, rel=0.002)


def test_the_recipes_step_fits_a_24_gb_card_and_grows_with_its_views(sd15):
    """The 512 px recipe (batch 3) and a packed group of 4 of it (one step of 12 views), in bf16: activations grow
    with the views, gradient checkpointing keeps a fraction of them, and attention is a fused kernel that never
    holds the 4096 × 4096 score matrix (the unfused one needs 4.4 GiB at batch 1, the fused one 0.71)."""
    one, recipe, group = (step_memory(sd15, 512, 512, batch=b) for b in (1, 3, 12))
    assert one.activations / 2**30 == pytest.approx(0.71, abs=0.02)
    assert recipe.activations == pytest.approx(3 * one.activations, rel=0.05)
    assert group.activations == pytest.approx(12 * one.activations, rel=0.05)
    checkpointed = step_memory(sd15, 512, 512, batch=12, gradient_checkpointing=True)
    assert checkpointed.weights == group.weights and checkpointed.activations < group.activations / 3
    assert group.peak / 2**30 < 11 and recipe.peak / 2**30 < 4  # with the text encoder and CUDA's own: far below 24 GB


def test_fake_tensors_count_what_real_ones_do():
    """The same step of the toy world's SD1 UNet counted on real CPU tensors (weights and all computed) and
    estimated on fake ones: equal, so the fakes allocate as the real kernels do (GPU kernels are checked by the
    GPU benchmark, which records both)."""
    import json

    from titk.models import load_model
    from titk.train import memory
    from titk.train.flops import denoiser_step

    config = dict(load_model("toyworld", dtype="fp32").unet.config)
    counter = live_bytes()
    with counter:
        step = denoiser_step(json.loads(json.dumps(config)), 16, 16, batch=4, device="cpu", dtype=torch.float32)
        weights = counter.live
        step()
        del step
    estimate = memory._count(json.dumps(config, sort_keys=True), 16, 16, 4, "fp32", False)
    assert estimate == [weights, counter.peak]
