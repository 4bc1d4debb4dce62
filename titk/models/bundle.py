"""The ModelBundle: everything titk needs from a loaded model, whatever its family or source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .families import Conditioning, Family, FamilyAdapter, adapter_for


@dataclass
class TextEncoderSlot:
    """One text encoder with its tokenizer; `key` names its tensor in an embedding (clip_l, clip_h, clip_g)."""

    key: str
    tokenizer: Any
    model: Any

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def token_embedding(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()


@dataclass
class ModelBundle:
    family: Family
    pipeline: Any
    encoders: list[TextEncoderSlot]
    prediction_type: str  # "epsilon" or "v_prediction"
    dtype: torch.dtype
    device: torch.device
    name: str
    source: str
    short_hash: str | None = None
    clip_skip: int = 1
    adapter: FamilyAdapter = field(init=False)
    noise_scheduler: Any = field(init=False)

    def __post_init__(self):
        from diffusers import DDPMScheduler

        self.adapter = adapter_for(self.family)
        # Training noise always follows the model's DDPM schedule, whatever sampler the pipeline carries.
        self.noise_scheduler = DDPMScheduler.from_config(
            self.pipeline.scheduler.config, prediction_type=self.prediction_type
        )

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(enc.width for enc in self.encoders)

    @property
    def default_size(self) -> int:
        """The resolution the model was trained at (UNet sample size × VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        """Token ids per encoder, [B, 77], truncated and padded as the encoder expects."""
        ids = []
        for enc in self.encoders:
            tok = enc.tokenizer
            ids.append(
                tok(
                    prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt",
                ).input_ids.to(self.device)
            )
        return ids

    def encode_ids(self, ids: list[torch.Tensor]) -> Conditioning:
        return self.adapter.encode(self.encoders, ids, self.clip_skip)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        return self.encode_ids(self.tokenize(prompts))

    def describe(self) -> dict[str, Any]:
        def params(module) -> int:
            return sum(p.numel() for p in module.parameters())

        return {
            "name": self.name,
            "source": self.source,
            "family": self.family.value,
            "prediction type": self.prediction_type,
            "short hash": self.short_hash or "-",
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "resolution": self.default_size,
            "text encoders": ", ".join(f"{e.key} ({e.width})" for e in self.encoders),
            "parameters": (
                f"unet {params(self.unet) / 1e6:.2f} M, vae {params(self.vae) / 1e6:.2f} M, "
                + ", ".join(f"{e.key} {params(e.model) / 1e6:.2f} M" for e in self.encoders)
            ),
        }
