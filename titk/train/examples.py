"""The training examples: each image's cached latent, its alpha weight and its prompt, batch by batch."""

from __future__ import annotations

import random

import torch

from ..data.latents import CachedLatent, sample_latent
from ..data.prompts import PromptBuilder


def step_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """The randomness of one micro-batch (noise, timesteps, latent samples) depends only on these three."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1009 + micro_batch) % (2**63))


class Examples:
    def __init__(self, dataset, latents: list[CachedLatent], prompts: PromptBuilder, sampling: str, scaling: float, seed: int,
                 shift: float = 0.0):
        self.records = dataset.records
        self.latents = latents
        self.prompts = prompts
        self.sampling = sampling
        self.scaling, self.shift = scaling, shift
        self.seed = seed
        self.fixed_prompts = None
        if prompts.fixed_per_image:
            # A1111 picks each image's template line once, when the dataset is built.
            rng = random.Random(f"titk:{seed}:prompts")
            self.fixed_prompts = [prompts.build(r.caption, rng) for r in self.records]

    def prompt_of(self, index: int, rng: random.Random) -> str:
        if self.fixed_prompts is not None:
            return self.fixed_prompts[index]
        return self.prompts.build(self.records[index].caption, rng)

    def micro_batch(self, indices: list[int], step: int, micro_batch: int, generator: torch.Generator):
        """(scaled latents [B,4,h,w], alpha weights [B,h,w] or None, prompts, SDXL's size ids [B,6]) for these images."""
        rng = random.Random(f"titk:{self.seed}:{step}:{micro_batch}")
        latents = torch.stack([
            sample_latent(self.latents[i], self.sampling, self.scaling, self.seed, self.records[i].sha256, generator, self.shift)
            for i in indices
        ])
        weights = None
        if any(self.latents[i].weight is not None for i in indices):
            weights = torch.stack([
                self.latents[i].weight if self.latents[i].weight is not None else torch.ones(latents.shape[-2:])
                for i in indices
            ])
        size_ids = torch.tensor([self.latents[i].size_ids for i in indices], dtype=torch.float32)
        return latents, weights, [self.prompt_of(i, rng) for i in indices], size_ids
