"""A deterministic validation loss: the denoising loss of the current vectors on the training images at
fixed noise and fixed timesteps, without gradients.

The training loss of an update is one random draw of noise, timestep and prompt per image, so it jumps
from step to step and two runs cannot be compared by it. Here every image gets the same
`TIMESTEPS` timesteps (evenly spread over the noise schedule), the same noise (seeded by the image's
content hash), its posterior-mean latent and one fixed prompt, whatever the training seed and step: the same
vectors give the same number, and vectors that denoise their images better give a lower one. Nothing here
draws from the training's random streams (each has its own generators), so a run with validation trains
exactly the vectors of a run without.
"""

from __future__ import annotations

import random

import torch

from ..data.latents import CachedLatent
from ..data.prompts import PromptBuilder
from .loss import denoising_loss

TIMESTEPS = 4  # per image, stratified over the schedule: one batched forward pass per image, about one update's cost in all
CHUNK = 4  # images' timesteps per UNet call (bounds memory at large sizes)


def validation_generator(sha: str) -> torch.Generator:
    """The noise of one image: depends on its content only (not on the training seed or step)."""
    return torch.Generator().manual_seed(int(sha[:15], 16))


class ValidationLoss:
    """Computes the loss of the vectors set on `bundle` over `records` (a dataset's) and their cached latents."""

    def __init__(self, bundle, records, latents: list[CachedLatent], prompts: PromptBuilder, name: str,
                 n_vectors: int, syntax: bool, timesteps: int = TIMESTEPS):
        self.bundle, self.name, self.n_vectors, self.syntax = bundle, name, n_vectors, syntax
        self.timesteps = bundle.objective.fixed(timesteps)
        self.items = []
        for record, latent in zip(records, latents):
            z = (latent.mean - bundle.latent_shift) * bundle.latent_scaling
            noise = torch.randn((len(self.timesteps), *z.shape), generator=validation_generator(record.sha256))
            text = prompts.build(record.caption, random.Random(f"titk:validation:{record.sha256}"))
            self.items.append((z, latent.weight, noise, text, torch.tensor([latent.size_ids], dtype=torch.float32)))

    @torch.no_grad()
    def __call__(self) -> float:
        bundle, total, count = self.bundle, 0.0, 0
        for z, weight, noise, text, size_ids in self.items:
            for start in range(0, len(self.timesteps), CHUNK):
                t = self.timesteps[start : start + CHUNK]
                n = len(t)
                tokens = bundle.tokenize([text] * n, self.name, self.n_vectors, syntax=self.syntax)
                cond = bundle.encode_ids(tokens, per_prompt=False)
                cond.time_ids = size_ids.expand(n, -1)
                weights = None if weight is None else weight.expand(n, *weight.shape)
                latents = z.expand(n, *z.shape)
                loss = denoising_loss(bundle, latents, cond, weights, noise[start : start + n].to(bundle.device), t.to(bundle.device))
                total += float(loss) * n
                count += n
        return total / count
