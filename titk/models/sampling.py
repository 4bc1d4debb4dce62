"""Generating images from a loaded model with an embedding, deterministic per (prompt, seed).

The embedding's vectors are set on the already loaded model (no reload per checkpoint) and prompts are
encoded by titk, then passed to the diffusers pipeline as embeddings. Each image's starting noise comes
from its own CPU generator seeded with its seed, so an image does not depend on the batch it was in or
on the device.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from PIL import Image

from ..config import SamplingSettings
from ..errors import TitkError

SAMPLERS = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


# Flow-matching models (SD3, Flux) sample along the flow: Euler as their pipelines ship, or (SD3) the multistep
# solvers on flow sigmas with the model's shift.
FLOW_SAMPLERS = {"euler": "FlowMatchEulerDiscreteScheduler", "dpm++2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}


def make_scheduler(bundle, name: str):
    import diffusers

    if name not in SAMPLERS:
        raise TitkError(f"sampler: unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    config = bundle.pipeline.scheduler.config
    if bundle.family.spec.flow_matching:
        usable = bundle.family.spec.samplers or tuple(FLOW_SAMPLERS)
        if name not in usable:
            raise TitkError(
                f"sampler: {name} does not sample {bundle.family.spec.label} models, which are trained by flow "
                f"matching; choose {', '.join(usable)}"
            )
        if name == "euler":
            return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
        return getattr(diffusers, FLOW_SAMPLERS[name])(
            num_train_timesteps=config.num_train_timesteps, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=config.shift,
        )
    cls_name, extra = SAMPLERS[name]
    return getattr(diffusers, cls_name).from_config(config, **extra)


def check_sampling(bundle, settings, what: str, sampler_hint: str = "") -> None:
    """Sampling settings the model cannot honour (a sampler its family cannot run, a side its denoiser cannot
    read), refused in one line naming `what` they belong to, before anything is trained or drawn; a refused
    sampler's line ends with `sampler_hint`."""
    try:
        make_scheduler(bundle, settings.sampler)
    except TitkError as exc:
        raise TitkError(f"{what}: {exc}{sampler_hint}") from None
    check_true_cfg(bundle, settings.true_cfg, f"{what}: true_cfg")
    for side in ("width", "height"):
        if problem := bundle.family.spec.side_problem(f"{what}: {side}", getattr(settings, side)):
            raise TitkError(problem)


def check_true_cfg(bundle, true_cfg: float | None, what: str) -> None:
    """True classifier-free guidance is Flux's alone: every other family's cfg already is that."""
    if true_cfg and bundle.adapter.runs_negative:
        raise TitkError(f"{what} is for Flux, whose cfg is a distilled guidance; on {bundle.family.spec.label} cfg is "
                        "classifier-free guidance already")


@contextmanager
def embedding_active(bundle, vectors: dict[str, torch.Tensor] | None):
    """Set an embedding's vectors on the model for the duration of the block, then restore the previous ones
    (a sweep evaluates checkpoints while the training vectors are set)."""
    previous = bundle.set_vectors(vectors)
    try:
        yield
    finally:
        bundle.set_vectors(previous)


@torch.no_grad()
def generate(
    bundle, prompts: list[str], seeds: list[int], sampling: SamplingSettings, *, name: str | None = None, n_vectors: int = 0
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order. The embedding's vectors must already be set on the bundle."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must pair up")
    check_true_cfg(bundle, sampling.true_cfg, "true_cfg")
    pipe = bundle.pipeline
    own_scheduler, pipe.scheduler = pipe.scheduler, make_scheduler(bundle, sampling.sampler)
    try:
        return _generate(bundle, pipe, prompts, seeds, name, n_vectors, sampling)
    finally:
        pipe.scheduler = own_scheduler


def _generate(bundle, pipe, prompts, seeds, name, n_vectors, s: SamplingSettings):
    width, height, negative_prompt = s.width or bundle.default_size, s.height or bundle.default_size, s.negative_prompt
    images: list[Image.Image] = []
    for start in range(0, len(prompts), s.batch_size):
        chunk, chunk_seeds = prompts[start : start + s.batch_size], seeds[start : start + s.batch_size]
        cond, negative = bundle.encode_prompts(chunk, name, n_vectors), None
        if bundle.adapter.runs_negative or s.true_cfg:
            negative = bundle.encode_prompts([negative_prompt] * len(chunk))
            cond, negative = _same_length(bundle, cond, negative)
            if bundle.family.spec.zero_empty_negative and not negative_prompt:
                # SDXL's convention: an empty negative prompt means zero conditioning.
                negative.hidden, negative.pooled = torch.zeros_like(negative.hidden), torch.zeros_like(negative.pooled)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in chunk_seeds]
        latents = torch.stack([
            torch.randn((bundle.latent_channels, height // bundle.vae_scale_factor, width // bundle.vae_scale_factor), generator=g)
            for g in generators
        ]).to(bundle.device, bundle.dtype)
        latents = bundle.adapter.pipeline_latents(latents)
        out = pipe(
            **bundle.adapter.pipeline_kwargs(cond, negative), **({"true_cfg_scale": s.true_cfg} if s.true_cfg else {}),
            num_inference_steps=s.steps, guidance_scale=s.cfg,
            height=height, width=width, latents=latents, output_type="pil",
            generator=generators,  # ancestral samplers draw fresh noise every step: from each image's own seed
        )
        images.extend(out.images)
    return images


def _same_length(bundle, cond, negative):
    """Prompt and negative prompt padded to as many chunks as the longer one, with the empty prompt's chunk
    (A1111's "pad prompt/negative prompt" option: the pipeline needs both of one length)."""
    longest = max(cond.hidden.shape[1], negative.hidden.shape[1])
    if cond.hidden.shape[1] == negative.hidden.shape[1]:
        return cond, negative
    empty = bundle.encode_prompts([""]).hidden
    for c in (cond, negative):
        repeats = (longest - c.hidden.shape[1]) // empty.shape[1]
        if repeats:
            c.hidden = torch.cat([c.hidden, empty.repeat(len(c.hidden), repeats, 1)], dim=1)
    return cond, negative

