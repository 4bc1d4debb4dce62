"""The denoising loss a TI step minimises, as in LDM's `p_losses` (A1111) and diffusers' examples."""

from __future__ import annotations

import torch


def diffusion_loss(bundle, latents: torch.Tensor, cond, weights: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """MSE between the UNet's prediction and its target at a uniform random timestep, averaged over everything.

    Fresh noise, no offset noise; the target is the noise (eps models) or the velocity (v models). With
    alpha weights the element-wise error is multiplied by the weight map before the mean.
    """
    schedule = bundle.noise_scheduler
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(bundle.device)
    timesteps = torch.randint(0, schedule.config.num_train_timesteps, (b,), generator=generator).to(bundle.device)
    return denoising_loss(bundle, latents, cond, weights, noise, timesteps)


def denoising_loss(bundle, latents: torch.Tensor, cond, weights: torch.Tensor | None, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The same loss at given noise and timesteps (training draws them; validation fixes them)."""
    schedule = bundle.noise_scheduler
    latents = latents.to(bundle.device)
    noisy = schedule.add_noise(latents, noise, timesteps)
    target = noise if bundle.prediction_type == "epsilon" else schedule.get_velocity(latents, noise, timesteps)
    height, width = latents.shape[-2] * bundle.vae_scale_factor, latents.shape[-1] * bundle.vae_scale_factor
    pred = bundle.unet(noisy.to(bundle.dtype), timesteps, **bundle.adapter.unet_kwargs(cond, height, width)).sample
    error = (pred.float() - target.float()) ** 2
    if weights is not None:
        error = error * weights.to(error.device)[:, None]
    return error.mean()
