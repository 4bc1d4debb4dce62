"""The ModelBundle: everything titk needs from a loaded model, whatever its family or source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..config import CONTEXT_TOKENS
from ..embeddings.placeholder import (
    FROZEN_BASE,
    name_token_ids,
    tokenize_with_placeholders,
)
from .families import Conditioning, Family, FamilyAdapter, adapter_for, t5_length
from .prompt_syntax import Name, PromptTokens, batch_tensors, prompt_chunks, prompt_sequence


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
    library: list = field(default_factory=list)  # FrozenEmbedding: other embeddings a prompt may name
    adapter: FamilyAdapter = field(init=False)
    objective: Any = field(init=False)  # what the denoiser is trained to predict (objectives.py)

    def __post_init__(self):
        from .objectives import objective_for

        self.adapter = adapter_for(self.family, self.unet.config)
        self.objective = objective_for(self.family, self.pipeline.scheduler.config, self.prediction_type)

    @property
    def unet(self):
        """The denoiser: a UNet, or SD3's or Flux's transformer (`pipeline.transformer`); the adapter's `predict` calls it."""
        return getattr(self.pipeline, self.family.spec.denoiser_attr)

    @property
    def noise_scheduler(self):
        return self.objective.scheduler

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)  # Flux's transformer reads them in 2×2 patches: 4× as many

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
    def latent_shift(self) -> float:
        """Subtracted before scaling: SD3's and Flux's VAEs have a shift factor, SD's none."""
        return float(self.vae.config.get("shift_factor") or 0.0)

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
        """The resolution the model was trained at (UNet sample size × VAE factor; Flux's from the family table)."""
        sample_size = self.unet.config.get("sample_size")
        return int(sample_size) * self.vae_scale_factor if sample_size else int(self.family.spec.default_size)

    def set_vectors(self, vectors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Make `vectors` (per encoder key, [N, width]) the rows behind the placeholder ids; None clears them.
        Returns the vectors set before."""
        previous = {enc.key: enc.spliced.extra for enc in self.encoders}
        for enc in self.encoders:
            enc.spliced.set_rows(None if vectors is None else vectors[enc.key])
        return None if any(v is None for v in previous.values()) else previous

    def use_library(self, entries: list) -> None:
        """Make these frozen embeddings (`titk.embeddings.library`) available to every prompt by name."""
        self.library = list(entries)
        for enc in self.encoders:
            rows = [e.vectors[enc.key] for e in self.library]
            enc.spliced.set_frozen(torch.cat(rows).to(self.device) if rows else None)

    def _names(self, enc: TextEncoderSlot, name: str | None, n_vectors: int) -> list[Name]:
        """The active embedding's name, then the library's (one named like the active one gives way to it)."""
        vocab = enc.spliced.vocab_size
        names = [Name(tuple(name_token_ids(enc.tokenizer, name)), tuple(range(vocab, vocab + n_vectors)))] if name else []
        start = vocab + FROZEN_BASE
        for entry in self.library:
            if entry.name != name:
                names.append(Name(tuple(name_token_ids(enc.tokenizer, entry.name)), tuple(range(start, start + entry.n_vectors))))
            start += entry.n_vectors
        return names

    def tokenize(self, prompts: list[str], name: str | None = None, n_vectors: int = 0, *, syntax: bool = True) -> PromptTokens:
        """Token ids and emphasis weights per encoder, [B, chunks × 77]; with `name`, its occurrences become
        N placeholder ids. `syntax`: A1111's prompt syntax and chunks, the library's names found too; without
        it (kohya) the prompt is plain text cut to one chunk, and only `name` is found, as kohya's trainer does."""
        ids, weights = [], []
        one_sequence = self.family.spec.one_chunk
        for enc in self.encoders:
            vocab = enc.spliced.vocab_size
            # SD3 and Flux read one sequence per encoder, as their pipelines do: CLIP's first 77 tokens, T5's up
            # to the pipeline's max_sequence_length (SD3 256, Flux dev 512, schnell 256)
            length = t5_length(enc.tokenizer, self.adapter.t5_tokens) if enc.key == "t5" else CONTEXT_TOKENS
            if syntax and one_sequence:
                names = self._names(enc, name, n_vectors)
                rows = [prompt_sequence(enc.tokenizer, p, names, length) for p in prompts]
                enc_ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
                enc_weights = torch.tensor([r[1] for r in rows], dtype=torch.float32)
            elif syntax:
                names = self._names(enc, name, n_vectors)
                enc_ids, enc_weights = batch_tensors(enc.tokenizer, [prompt_chunks(enc.tokenizer, p, names) for p in prompts])
            else:
                enc_ids = tokenize_with_placeholders(enc.tokenizer, prompts, name, n_vectors, vocab)
                enc_weights = torch.ones(enc_ids.shape)
                if one_sequence:
                    enc_ids, enc_weights = enc_ids[:, :length], enc_weights[:, :length]
            ids.append(enc_ids.to(self.device))
            weights.append(enc_weights.to(self.device))
        return PromptTokens(ids, weights, one_sequence)

    def encode_ids(self, tokens: PromptTokens, *, per_prompt: bool = True) -> Conditioning:
        """Each 77-token chunk encoded on its own and the chunks joined along the sequence; SDXL's pooled
        output is the first chunk's, as in A1111."""
        parts = []
        for k in range(tokens.chunks):
            ids, weights = tokens.chunk(k)
            parts.append(self.adapter.encode(self.encoders, ids, self.clip_skip, weights, per_prompt))
        return Conditioning(torch.cat([p.hidden for p in parts], dim=1), parts[0].pooled)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], name: str | None = None, n_vectors: int = 0) -> Conditioning:
        """Sampling's encoding: A1111's syntax, each prompt's emphasis normalised on its own."""
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
