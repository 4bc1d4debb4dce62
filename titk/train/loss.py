"""The denoising loss a TI step minimises, as in LDM's `p_losses` (A1111) and diffusers' examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.families import Conditioning


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch's loss, ready for the UNet: latents, conditioning, alpha weights, noise, timesteps."""

    latents: torch.Tensor
    cond: Conditioning
    weights: torch.Tensor | None
    noise: torch.Tensor
    timesteps: torch.Tensor


def draw_noise(bundle, latents: torch.Tensor, cond, weights: torch.Tensor | None, generator: torch.Generator) -> LossInputs:
    """Fresh noise (no offset noise) and a random timestep per image (as the model's objective draws them:
    objectives.py), from the micro-batch's generator.

    The loss is then the MSE between the denoiser's prediction and its target, averaged over everything: the
    target is the noise (eps models), the velocity (v models) or the flow (SD3, Flux); with alpha weights the
    element-wise error is multiplied by the weight map before the mean."""
    noise = torch.randn(latents.shape, generator=generator).to(bundle.device)
    timesteps = bundle.objective.draw(latents.shape[0], generator)
    return LossInputs(latents, cond, weights, noise, timesteps.to(bundle.device))


def denoising_loss(bundle, latents: torch.Tensor, cond, weights: torch.Tensor | None, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """One micro-batch's loss at given noise and timesteps (training draws them, draw_noise; validation fixes them)."""
    return denoising_losses(bundle, [LossInputs(latents, cond, weights, noise, timesteps)])[0]


def denoising_losses(bundle, parts: list[LossInputs]) -> list[torch.Tensor]:
    """Each part's loss, from one UNet call over all parts of one shape (packed trials: the UNet is frozen
    and treats every image on its own, so a part's loss is what a call of its own would give, within rounding)."""
    objective, losses = bundle.objective, [None] * len(parts)
    shapes: dict[tuple, list[int]] = {}
    for i, part in enumerate(parts):
        pooled = None if part.cond.pooled is None else tuple(part.cond.pooled.shape[1:])
        shapes.setdefault((tuple(part.latents.shape[1:]), tuple(part.cond.hidden.shape[1:]), pooled), []).append(i)
    for members in shapes.values():
        group = [parts[i] for i in members]
        latents = [p.latents.to(bundle.device) for p in group]
        noisy = [objective.noisy(z, p.noise, p.timesteps) for z, p in zip(latents, group)]
        targets = [objective.target(z, p.noise, p.timesteps) for z, p in zip(latents, group)]
        cond, timesteps = Conditioning.cat([p.cond for p in group]), torch.cat([p.timesteps for p in group])
        height, width = latents[0].shape[-2] * bundle.vae_scale_factor, latents[0].shape[-1] * bundle.vae_scale_factor
        noisy = noisy[0] if len(group) == 1 else torch.cat(noisy)
        pred = bundle.adapter.predict(bundle.unet, noisy.to(bundle.dtype), timesteps, cond, height, width)
        for i, p, target, out in zip(members, group, targets, pred.split([len(z) for z in latents])):
            error = (out.float() - target.float()) ** 2
            if p.weights is not None:
                error = error * p.weights.to(error.device)[:, None]
            losses[i] = error.mean()
    return losses
