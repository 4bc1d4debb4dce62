"""The ModelBundle: everything titk needs from a loaded model, whatever its family or source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..embeddings.placeholder import tokenize_with_placeholders
from .families import Conditioning, Family, FamilyAdapter, adapter_for


@dataclass
class TextEncoderSlot:
    """One text encoder with its tokenizer; `key` names its tensor in an embedding (clip_l, clip_h, clip_g)."""

    key: str
    tokenizer: Any
    model: Any
    truncates_init_text: bool = False  # A1111 cuts the init text to N tokens for OpenAI CLIP, not OpenCLIP

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def spliced(self):
        """The encoder's token-embedding wrapper that holds the active embedding's vectors."""
        return self.model.get_input_embeddings()

    @property
    def table(self) -> torch.Tensor:
        """The frozen vocabulary embedding matrix [49408, width]."""
        return self.spliced.weight


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

    @cached_property
    def vae_fingerprint(self) -> str:
        """A hash of the VAE's weights and dtype, so cached latents of another VAE or precision are never reused."""
        digest = hashlib.sha256(str(self.vae.dtype).encode())
        for name, tensor in sorted(self.vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(enc.width for enc in self.encoders)

    @property
    def default_size(self) -> int:
        """The resolution the model was trained at (UNet sample size × VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def set_vectors(self, vectors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Make `vectors` (per encoder key, [N, width]) the rows behind the placeholder ids; None clears them.
        Returns the vectors set before."""
        previous = {enc.key: enc.spliced.extra for enc in self.encoders}
        for enc in self.encoders:
            enc.spliced.set_rows(None if vectors is None else vectors[enc.key])
        return None if any(v is None for v in previous.values()) else previous

    def tokenize(self, prompts: list[str], name: str | None = None, n_vectors: int = 0) -> list[torch.Tensor]:
        """Token ids per encoder, [B, 77]; with `name`, its occurrences become N placeholder ids."""
        return [
            tokenize_with_placeholders(enc.tokenizer, prompts, name, n_vectors, enc.spliced.vocab_size).to(self.device)
            for enc in self.encoders
        ]

    def encode_ids(self, ids: list[torch.Tensor]) -> Conditioning:
        return self.adapter.encode(self.encoders, ids, self.clip_skip)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], name: str | None = None, n_vectors: int = 0) -> Conditioning:
        return self.encode_ids(self.tokenize(prompts, name, n_vectors))

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
