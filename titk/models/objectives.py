"""What the denoiser is trained to predict, per family: DDPM noise or velocity (SD1, SD2, SDXL), or the
flow-matching velocity of SD3 and Flux.

A TI is trained with the objective the model was trained with, so the loss, the noised input and the
timesteps given to the denoiser are each model's own:

- DDPM (`DDPMObjective`): a uniform integer timestep in [0, 1000), the noised latent of the model's beta
  schedule, and the noise (ε models) or the velocity (v models) as target, as A1111, kohya and diffusers'
  textual-inversion scripts do.
- Flow matching (`FlowMatchObjective`): x_σ = (1 − σ)·x₀ + σ·ε with the target ε − x₀, the denoiser told
  t = 1000·σ (Flux's transformer σ itself). σ comes from the model's own `FlowMatchEulerDiscreteScheduler` (SD3
  shifted by its `shift`, Flux unshifted) at an index drawn as
  diffusers' SD3 and Flux training scripts draw it (`compute_density_for_timestep_sampling`): logit-normal
  for SD3 (mean 0, std 1, as the SD3 paper trains), uniform for Flux.
"""

from __future__ import annotations

import torch


class DDPMObjective:
    def __init__(self, scheduler_config, prediction_type: str):
        from diffusers import DDPMScheduler

        # Training noise always follows the model's DDPM schedule, whatever sampler the pipeline carries.
        self.scheduler = DDPMScheduler.from_config(scheduler_config, prediction_type=prediction_type)
        self.prediction_type = prediction_type
        self.total = self.scheduler.config.num_train_timesteps

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.total, (n,), generator=generator)

    def fixed(self, k: int) -> torch.Tensor:
        """k timesteps at the centres of k equal parts of the schedule (validation)."""
        return torch.tensor([int((i + 0.5) * self.total / k) for i in range(k)], dtype=torch.long)

    def noisy(self, latents, noise, timesteps):
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps)


class FlowMatchObjective:
    prediction_type = "flow"

    def __init__(self, scheduler_config, weighting: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        # The model's own schedule, as diffusers' training scripts build it: SD3's shifted by its static `shift`;
        # Flux's unshifted, as a config with dynamic shifting leaves it (its pipeline shifts per resolution when
        # sampling; its training scripts draw from the unshifted schedule).
        config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self.weighting = weighting  # "logit_normal" (SD3) or "none" (uniform; Flux)
        self.total = self.scheduler.config.num_train_timesteps

    def _at(self, u: torch.Tensor) -> torch.Tensor:
        """The schedule's timesteps at fractions u of the way through it (0: the noisiest)."""
        indices = (u * self.total).long().clamp(0, self.total - 1)
        return self.scheduler.timesteps[indices].float()

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(self.weighting, n, logit_mean=0.0, logit_std=1.0, mode_scale=1.29, generator=generator)
        return self._at(u)

    def fixed(self, k: int) -> torch.Tensor:
        return self._at(torch.tensor([(i + 0.5) / k for i in range(k)]))

    def _sigmas(self, timesteps, like):
        return (timesteps.to(like.device, torch.float32) / self.total).reshape(-1, *[1] * (like.ndim - 1))

    def noisy(self, latents, noise, timesteps):
        sigma = self._sigmas(timesteps, latents)
        return (1.0 - sigma) * latents + sigma * noise

    def target(self, latents, noise, timesteps):
        return noise - latents


def objective_for(family, scheduler_config, prediction_type: str):
    if family.spec.flow_matching:
        return FlowMatchObjective(scheduler_config, family.spec.flow_matching)
    return DDPMObjective(scheduler_config, prediction_type)
