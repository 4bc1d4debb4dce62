"""Numeric tests of single training and sampling rules, each against an independent computation.

kohya's clipping norm against a full-matrix `clip_grad_norm_`, the alpha-weighted loss against a value
worked out by hand, a sampled image against the same seed in another batch, and SDXL's empty negative prompt
against diffusers' own zero conditioning.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import plain_ids

from titk.config import SamplingSettings
from titk.models import load_model
from titk.models.sampling import generate
from titk.train import trainee as loop
from titk.models.families import Conditioning
from titk.train.loss import denoising_losses, draw_noise


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sdxl(fixtures):
    return load_model(fixtures["tiny-sdxl"].folder, dtype="fp32")


# ------------------------------------------------------------------------------ kohya's clipping norm

PROMPTS = ["a photo of ohwx, photo photo", "ohwx person ohwx"]  # repeated tokens share one matrix row


class _Scaler:
    def __init__(self, scale: float):
        self.scale = scale

    def is_enabled(self):
        return self.scale != 1.0

    def get_scale(self):
        return self.scale


def _titk_clipped(bundle, start, threshold, weights, scale=1.0):
    """The vectors' gradients after titk's kohya clipping; the loss multiplied by `scale` as a GradScaler would."""
    vectors = {"clip_l": torch.nn.Parameter(start.clone())}
    captured = loop._capture(bundle, True)
    bundle.set_vectors(vectors)
    try:
        hidden = bundle.encode_ids(bundle.tokenize(PROMPTS, "ohwx", len(start))).hidden
        ((hidden * weights).sum() * scale).backward()
        vectors["clip_l"].grad /= scale  # what scaler.unscale_ does to the optimizer's parameters
        loop._clip(vectors, "norm", threshold, captured, _Scaler(scale))
    finally:
        bundle.set_vectors(None)
        loop._capture(bundle, False)
    return vectors["clip_l"].grad


def _full_matrix_grad(bundle, start, weights):
    """kohya's view: the vectors are rows appended to the token-embedding matrix, and the whole matrix is a
    parameter. Returns the matrix, its gradient filled."""
    enc = bundle.encoders[0]
    ids = plain_ids(enc.tokenizer, PROMPTS, "ohwx", enc.spliced.vocab_size, len(start))  # the appended rows
    matrix = torch.nn.Parameter(torch.cat([enc.table.detach().float(), start.clone()]))
    plain = torch.nn.Embedding(*matrix.shape)
    plain.weight = matrix
    spliced = enc.model.get_input_embeddings()
    enc.model.set_input_embeddings(plain)
    try:
        hidden = enc.model(ids).last_hidden_state
        (hidden * weights).sum().backward()
    finally:
        enc.model.set_input_embeddings(spliced)
    return matrix


@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_kohya_clipping_equals_clip_grad_norm_over_the_whole_matrix(sd1, scale):
    torch.manual_seed(0)
    start = torch.randn(2, 32) * 0.1
    weights = torch.randn(len(PROMPTS), 77, 32)
    matrix = _full_matrix_grad(sd1, start, weights)
    vocab = sd1.encoders[0].spliced.vocab_size
    full_norm = float(matrix.grad.norm())
    own_norm = float(matrix.grad[vocab:].norm())
    assert own_norm < 0.9 * full_norm  # the caption rows carry a real share of the norm

    threshold = 0.5 * full_norm  # clipping bites
    torch.nn.utils.clip_grad_norm_([matrix], threshold)
    expected = matrix.grad[vocab:]
    got = _titk_clipped(sd1, start, threshold, weights, scale)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # Clipping the vectors alone would give a visibly different gradient.
    assert not torch.allclose(got, expected * full_norm / own_norm, atol=1e-6, rtol=1e-3)


def test_kohya_clipping_leaves_a_gradient_under_the_threshold_alone(sd1):
    torch.manual_seed(1)
    start, weights = torch.randn(2, 32) * 0.1, torch.randn(len(PROMPTS), 77, 32)
    matrix = _full_matrix_grad(sd1, start, weights)
    vocab = sd1.encoders[0].spliced.vocab_size
    threshold = 2.0 * float(matrix.grad.norm())
    torch.testing.assert_close(_titk_clipped(sd1, start, threshold, weights), matrix.grad[vocab:], atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------------------ the alpha-weighted loss


def _stub_bundle(pred: torch.Tensor):
    """Just enough of a bundle for diffusion_loss: a v-model whose target is zero and whose UNet always
    answers `pred`, so the element-wise error is pred² whatever the noise and timestep."""
    objective = SimpleNamespace(
        draw=lambda n, generator: torch.randint(0, 1000, (n,), generator=generator),
        noisy=lambda latents, noise, t: latents + noise,
        target=lambda latents, noise, t: torch.zeros_like(latents),
    )
    unet = lambda noisy, timestep, **kw: SimpleNamespace(sample=pred.expand_as(noisy).clone())  # noqa: E731
    return SimpleNamespace(
        objective=objective, device=torch.device("cpu"), prediction_type="v_prediction", dtype=torch.float32,
        vae_scale_factor=8, unet=unet, adapter=SimpleNamespace(predict=lambda unet, x, t, cond, h, w: unet(x, timestep=t).sample),
    )


def diffusion_loss(bundle, latents, cond, weights, generator):
    """A training micro-batch's loss, as the loop computes it."""
    return denoising_losses(bundle, [draw_noise(bundle, latents, cond, weights, generator)])[0]


def test_a_half_zero_alpha_map_weights_the_loss_as_computed_by_hand():
    # One latent column predicts 1 and the other 3, in all 4 channels: squared errors 1 and 9.
    pred = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    bundle, latents = _stub_bundle(pred), torch.zeros(1, 4, 1, 2)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cond = Conditioning(torch.zeros(1, 77, 8))
    assert float(diffusion_loss(bundle, latents, cond, None, gen())) == pytest.approx(5.0)  # (1 + 9) / 2
    # A1111's weights for an alpha map 0 on the left, opaque on the right: min 0, mean 1 → [0, 2].
    weights = torch.tensor([[[0.0, 2.0]]])
    assert float(diffusion_loss(bundle, latents, cond, weights, gen())) == pytest.approx(9.0)  # (0·1 + 2·9) / 2
    # Two images, the second without alpha (weights of one): the mean of 9 and 5.
    two = torch.cat([weights, torch.ones(1, 1, 2)])
    assert float(diffusion_loss(bundle, torch.zeros(2, 4, 1, 2), Conditioning(torch.zeros(2, 77, 8)), two, gen())) == pytest.approx(7.0)


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("sampler", ["dpm++2m", "euler_a"])
def test_the_same_seed_gives_the_same_image_whatever_the_batch(sd1, sampler):
    prompts = ["a photo of a person", "a red car", "a house by the sea", "a dog"]
    seeds = [5, 6, 7, 8]
    settings = SamplingSettings(sampler=sampler, steps=3, width=32, height=32, batch_size=4)
    torch.manual_seed(123)  # the global generator must not matter
    batch = generate(sd1, prompts, seeds, settings)
    for k in (0, 2):
        torch.manual_seed(k)
        alone = generate(sd1, [prompts[k]], [seeds[k]], settings.model_copy(update={"batch_size": 1}))[0]
        # The same image up to rounding: a batch of 4 and a batch of 1 take different matmul kernels, which can
        # move a pixel by one level (seen: 1 of 3072 values with euler_a on 2 threads). Another seed's noise
        # would change most of them.
        diff = np.abs(np.asarray(alone, dtype=int) - np.asarray(batch[k], dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))


def _spy_pipeline(monkeypatch, bundle):
    """Record the keyword arguments of every pipeline call (and still run it)."""
    calls = []
    cls = type(bundle.pipeline)
    real = cls.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return calls


def test_sdxl_empty_negative_prompt_is_zero_conditioning_as_in_diffusers(sdxl, monkeypatch):
    assert sdxl.pipeline.config.force_zeros_for_empty_prompt  # the fixture follows SDXL base's convention
    calls = _spy_pipeline(monkeypatch, sdxl)
    settings = SamplingSettings(sampler="ddim", steps=2, cfg=5.0, width=32, height=32)
    image = generate(sdxl, ["a photo of a person"], [3], settings)[0]
    kwargs = calls[-1]
    assert not kwargs["negative_prompt_embeds"].any() and not kwargs["negative_pooled_prompt_embeds"].any()
    assert kwargs["prompt_embeds"].any()

    # diffusers, given no negative prompt at all, zeroes it itself (force_zeros_for_empty_prompt): same image.
    from titk.models.sampling import make_scheduler

    own = sdxl.pipeline.scheduler
    sdxl.pipeline.scheduler = make_scheduler(sdxl, "ddim")
    try:
        direct = sdxl.pipeline(
            prompt_embeds=kwargs["prompt_embeds"], pooled_prompt_embeds=kwargs["pooled_prompt_embeds"],
            num_inference_steps=2, guidance_scale=5.0, height=32, width=32, latents=kwargs["latents"], output_type="pil",
        ).images[0]
    finally:
        sdxl.pipeline.scheduler = own
    np.testing.assert_array_equal(np.asarray(image), np.asarray(direct))

    # A non-empty negative prompt is encoded.
    generate(sdxl, ["a photo of a person"], [3], settings.model_copy(update={"negative_prompt": "blurry"}))
    assert calls[-1]["negative_prompt_embeds"].any() and calls[-1]["negative_pooled_prompt_embeds"].any()


def test_sd1_empty_negative_prompt_is_the_encoded_empty_text(sd1, monkeypatch):
    calls = _spy_pipeline(monkeypatch, sd1)
    generate(sd1, ["a photo of a person"], [3], SamplingSettings(sampler="ddim", steps=1, width=32, height=32))
    negative = calls[-1]["negative_prompt_embeds"]
    assert negative.any()
    torch.testing.assert_close(negative, sd1.encode_prompts([""]).hidden)
