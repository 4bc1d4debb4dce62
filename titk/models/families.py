"""Model families: how to recognise each one and how it turns token ids into UNet conditioning.

What a family is (encoders, widths, pipeline class, shipped configs, file keys) is data in `titk.families`;
this module adds what needs torch: recognising a model and the conditioning adapter. SD1 has CLIP ViT-L
(768), SD2 OpenCLIP ViT-H (1024, usually v-prediction at 768 px), SDXL CLIP-L + OpenCLIP bigG (768 + 1280)
with a pooled embedding and size/crop time ids, SD3 CLIP-L + CLIP-G + T5 (768 + 1280 + 4096) conditioning an
MMDiT, Flux CLIP-L's pooled output + T5 (768 + 4096) conditioning its transformer on packed latents. The
training loop and the sampler only call `encode`, `predict` and `pipeline_kwargs`, so adding a family does
not touch them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from ..config import FLUX_SCHNELL_T5_TOKENS, FLUX_T5_TOKENS, SD3_T5_TOKENS
from ..errors import TitkError, UnknownArchitecture
from ..families import FAMILIES, FamilySpec
from .prompt_syntax import emphasize

UNET_PREFIX = "model.diffusion_model."


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"
    FLUX = "flux"

    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.value]

    @property
    def encoder_keys(self) -> tuple[str, ...]:
        """Names of the text encoders, as used for the per-encoder tensors of an embedding."""
        return self.spec.encoder_keys

_UNSUPPORTED_MARKERS = {
    # later Flux generations and Flux derivatives, checked before FLUX.1's blocks, which some of them share
    "single_stream_modulation.": "a FLUX.2 single file",
    "early_stream_modulations.": "a Flux single file of a later generation than FLUX.1",
    "distilled_guidance_layer.": "a Chroma single file",
    "controlnet_blocks.": "a ControlNet",
    "scaled_fp8": "a ComfyUI scaled-fp8 file (its weights need their scales, which diffusers does not apply)",
    "control_model.": "a ControlNet",
    "lora_unet_": "a LoRA",
    "lora_te_": "a LoRA",
}


def family_of_pipeline(pipe) -> Family:
    if hasattr(pipe, "transformer"):
        return Family.SD3 if hasattr(pipe, "text_encoder_3") else Family.FLUX
    if hasattr(pipe, "text_encoder_2"):
        return Family.SDXL
    return Family.SD2 if pipe.text_encoder.config.hidden_act == "gelu" else Family.SD1


def detect_folder(folder: Path) -> Family:
    """Family of a diffusers pipeline folder, from its model_index.json and text-encoder config."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise TitkError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TitkError(f"{index_path}: unreadable model_index.json ({exc})") from None
    cls = index.get("_class_name", "?")
    if cls == "StableDiffusionXLPipeline":
        family = Family.SDXL
    elif cls == "StableDiffusion3Pipeline":
        return Family.SD3
    elif cls == "FluxPipeline":
        return Family.FLUX
    elif cls == "StableDiffusionPipeline":
        te_config = _read_json(folder / "text_encoder" / "config.json")
        family = Family.SD2 if te_config.get("hidden_act") == "gelu" else Family.SD1
    else:
        raise UnknownArchitecture(
            f"{folder}: a {cls}, which titk does not support (it trains SD1, SD2, SDXL, SD3 and Flux pipelines)"
        )
    unet_config = _read_json(folder / "unet" / "config.json")
    if unet_config.get("in_channels", 4) != 4:
        raise UnknownArchitecture(
            f"{folder}: UNet with {unet_config['in_channels']} input channels (inpainting or other "
            "conditioning models are not supported; use the base text-to-image model)"
        )
    return family


def denoiser_prefix(keys: set[str]) -> str:
    """Where a single file keeps its denoiser: under `model.diffusion_model.` (A1111's and ComfyUI's files), or at
    the top (Stability's and Black Forest Labs' transformer files)."""
    return UNET_PREFIX if any(k.startswith(UNET_PREFIX) for k in keys) else ""


def block_count(keys: set[str], prefix: str, kind: str) -> int:
    """How many `{prefix}{kind}.N.` blocks a single file holds (0 when none)."""
    return 1 + max((int(k[len(prefix):].split(".")[1]) for k in keys if k.startswith(f"{prefix}{kind}.")), default=-1)


def detect_checkpoint(path: Path, keys: set[str], shape) -> Family:
    """Family of an original-layout single-file checkpoint, from its key names.

    `shape(key)` returns a tensor's shape without loading the others.
    """
    if any(k.startswith(("joint_blocks.", UNET_PREFIX + "joint_blocks.")) for k in keys):
        return Family.SD3  # Stability's MMDiT layout; which encoders it holds is checked when it loads
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    for marker, what in _UNSUPPORTED_MARKERS.items():
        if any(k.startswith(marker) or k.startswith(UNET_PREFIX + marker) for k in keys):
            raise UnknownArchitecture(f"{path}: this looks like {what}, which titk cannot load as a base model")
    if any(k.startswith(("double_blocks.", UNET_PREFIX + "double_blocks.")) for k in keys):
        prefix = denoiser_prefix(keys)
        if not {prefix + "img_in.weight", prefix + "time_in.in_layer.weight"} <= keys:
            raise UnknownArchitecture(f"{path}: Flux-like blocks but no FLUX.1 transformer (a LoRA, a ControlNet or another model?)")
        return Family.FLUX  # Black Forest Labs' layout; its shapes are checked when it loads
    if not has_unet:
        raise UnknownArchitecture(
            f"{path}: no Stable Diffusion UNet (model.diffusion_model.*) in this file; "
            "is it a VAE, LoRA or embedding rather than a checkpoint?"
        )
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in in keys and shape(conv_in)[1] != 4:
        raise UnknownArchitecture(
            f"{path}: UNet with {shape(conv_in)[1]} input channels (inpainting or other conditioning "
            "models are not supported; use the base text-to-image model)"
        )
    sdxl_l, sdxl_g = Family.SDXL.spec.encoders
    if token_table_key(sdxl_g) in keys:
        if not any(k.startswith(sdxl_l.checkpoint_prefix.removesuffix("text_model.")) for k in keys):
            raise UnknownArchitecture(f"{path}: SDXL checkpoint without its CLIP-L encoder")
        return Family.SDXL
    if "conditioner.embedders.0.model.token_embedding.weight" in keys:
        raise UnknownArchitecture(f"{path}: this looks like the SDXL refiner, which has no use for TI")
    if token_table_key(Family.SD2.spec.encoders[0]) in keys:
        return Family.SD2
    sd1_clip = Family.SD1.spec.encoders[0].checkpoint_prefix.removesuffix("text_model.")
    if any(k.startswith(sd1_clip) for k in keys):
        return Family.SD1
    raise UnknownArchitecture(f"{path}: a UNet but no text encoder titk recognises (SD1, SD2 or SDXL layouts)")


def token_table_key(encoder) -> str:
    """The single-file key of an OpenCLIP-layout encoder's token table."""
    return encoder.checkpoint_prefix + "token_embedding.weight"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TitkError(f"{path}: missing; the pipeline folder is incomplete") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TitkError(f"{path}: unreadable ({exc})") from None


@dataclass
class Conditioning:
    """What the UNet is conditioned on for a batch of prompts."""

    hidden: torch.Tensor  # [B, chunks × 77, cross_attention_dim] (SD3: [B, 77 + 77, T5 width]; Flux: [B, T5 length, T5 width])
    # SDXL: projected pooled output of CLIP-G, [B, 1280]; SD3: CLIP-L's and CLIP-G's [B, 2048]; Flux: CLIP-L's unprojected [B, 768]
    pooled: torch.Tensor | None = None
    # SDXL: each image's original size, crop and target size [B, 6] (training); None: the size generated at, uncropped
    time_ids: torch.Tensor | None = None

    def repeat(self, n: int) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(n, 0)
        time_ids = None if self.time_ids is None else self.time_ids.repeat_interleave(n, 0)
        return Conditioning(self.hidden.repeat_interleave(n, 0), pooled, time_ids)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """The conditionings of several batches as one batch (their images in order)."""
        if len(parts) == 1:
            return parts[0]
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        time_ids = None if any(p.time_ids is None for p in parts) else torch.cat([p.time_ids for p in parts])
        return Conditioning(torch.cat([p.hidden for p in parts]), pooled, time_ids)


def _emphasize(hidden, weights, i: int, per_prompt: bool):
    return hidden if weights is None else emphasize(hidden, weights[i], per_prompt)


def _eos_positions(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    # The first end token; placeholder ids above the vocabulary must not be mistaken for it.
    return (ids == eos_id).int().argmax(dim=-1)


class FamilyAdapter:
    family: Family
    runs_negative = True  # whether its cfg runs a negative prompt (Flux's distilled guidance does not; its true_cfg does)
    t5_tokens: int | None = None  # the most tokens its T5 reads (SD3, Flux), where the tokenizer allows them

    def encode(self, encoders, ids: list[torch.Tensor], clip_skip: int = 1, weights=None, per_prompt: bool = True) -> Conditioning:
        """One 77-token chunk per prompt; `weights` (per encoder, [B, 77]) are the prompt's emphasis,
        applied to each encoder's hidden states on their own, as A1111 does."""
        raise NotImplementedError

    def unet_kwargs(self, cond: Conditioning, height: int, width: int) -> dict:
        return {"encoder_hidden_states": cond.hidden}

    def predict(self, unet, x: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, height: int, width: int) -> torch.Tensor:
        """The denoiser's output for latents `x` [B, C, h, w] at `timesteps` (the objective's), in x's layout."""
        return unet(x, timestep=timesteps, **self.unet_kwargs(cond, height, width)).sample

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Starting latents [B, C, h, w] in the layout the family's pipeline takes them."""
        return latents

    def pipeline_kwargs(self, cond: Conditioning, negative: Conditioning) -> dict:
        """Conditioning passed to a diffusers pipeline call in place of prompt strings."""
        return {"prompt_embeds": cond.hidden, "negative_prompt_embeds": negative.hidden}


class SDAdapter(FamilyAdapter):
    """SD1 and SD2: one CLIP encoder; the (clip-skipped) last hidden state after the final norm."""

    def __init__(self, family: Family):
        self.family = family

    def encode(self, encoders, ids, clip_skip=1, weights=None, per_prompt=True):
        te = encoders[0].model
        if clip_skip <= 1:
            hidden = te(ids[0]).last_hidden_state
        else:
            out = te(ids[0], output_hidden_states=True)
            hidden = te.final_layer_norm(out.hidden_states[-clip_skip])
        return Conditioning(_emphasize(hidden, weights, 0, per_prompt))


class SDXLAdapter(FamilyAdapter):
    """SDXL: penultimate hidden states of both encoders side by side, plus CLIP-G's pooled projection."""

    family = Family.SDXL

    def encode(self, encoders, ids, clip_skip=1, weights=None, per_prompt=True):
        hidden = []
        for i, (enc, enc_ids) in enumerate(zip(encoders, ids)):
            text_model = getattr(enc.model, "text_model", enc.model)
            out = text_model(enc_ids, output_hidden_states=True)
            hidden.append(_emphasize(out.hidden_states[-(clip_skip + 1)], weights, i, per_prompt))
            if hasattr(enc.model, "text_projection"):
                eos = _eos_positions(enc_ids, enc.tokenizer.eos_token_id)
                last = out.last_hidden_state[torch.arange(len(enc_ids)), eos]
                pooled = enc.model.text_projection(last)
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    @staticmethod
    def time_ids(height: int, width: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        # Original size, crop top-left, target size: the image is shown uncropped at its own size.
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32, device=like.device)
        return ids.expand(batch, 6)

    def unet_kwargs(self, cond, height, width):
        # In fp32 whatever the model's precision: bf16 would round sizes above 256 (1365 → 1368); the UNet casts
        # the embedding it makes of them.
        if cond.time_ids is not None:
            time_ids = cond.time_ids.to(cond.hidden.device, torch.float32)
        else:
            time_ids = self.time_ids(height, width, len(cond.hidden), cond.hidden)
        return {
            "encoder_hidden_states": cond.hidden,
            "added_cond_kwargs": {"text_embeds": cond.pooled, "time_ids": time_ids},
        }

    def pipeline_kwargs(self, cond, negative):
        return {
            "prompt_embeds": cond.hidden,
            "negative_prompt_embeds": negative.hidden,
            "pooled_prompt_embeds": cond.pooled,
            "negative_pooled_prompt_embeds": negative.pooled,
        }


class SD3Adapter(FamilyAdapter):
    """SD3/SD3.5, as its pipeline conditions the MMDiT: CLIP-L's and CLIP-G's penultimate hidden states side by
    side, zero-padded to T5's width, then T5's last hidden state after them along the sequence; the pooled
    input is both CLIP projections side by side. Without a T5 encoder its part is 256 zeros, as in the pipeline."""

    family = Family.SD3

    t5_tokens = SD3_T5_TOKENS

    def __init__(self, joint_width: int | None = None):
        self.joint_width = joint_width  # the transformer's joint_attention_dim: T5's width, for models without T5

    def encode(self, encoders, ids, clip_skip=1, weights=None, per_prompt=True):
        clip_hidden, pooled, t5 = [], [], None
        for i, (enc, enc_ids) in enumerate(zip(encoders, ids)):
            if enc.key == "t5":
                t5 = _emphasize(enc.model(enc_ids).last_hidden_state, weights, i, per_prompt)
                continue
            out = enc.model(enc_ids, output_hidden_states=True)
            clip_hidden.append(_emphasize(out.hidden_states[-(clip_skip + 1)], weights, i, per_prompt))
            eos = _eos_positions(enc_ids, enc.tokenizer.eos_token_id)
            pooled.append(enc.model.text_projection(out.last_hidden_state[torch.arange(len(enc_ids)), eos]))
        clip = torch.cat(clip_hidden, dim=-1)
        if t5 is None:  # as the pipeline: zeros over the T5 length it would have read
            width = self.joint_width or clip.shape[-1]
            t5 = clip.new_zeros(clip.shape[0], self.t5_tokens, width)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5], dim=1), torch.cat(pooled, dim=-1))

    def unet_kwargs(self, cond, height, width):
        return {"encoder_hidden_states": cond.hidden, "pooled_projections": cond.pooled}

    def pipeline_kwargs(self, cond, negative):
        return SDXLAdapter.pipeline_kwargs(self, cond, negative)


# Flux dev is guidance-distilled: its transformer is told the guidance it should imitate, in training too.
# diffusers' Flux training scripts tell it 3.5, the guidance it is sampled at.
FLUX_TRAINING_GUIDANCE = 3.5


def flux_t5_tokens(guidance_embeds: bool) -> int:
    """How many T5 tokens a Flux transformer was trained to read: FLUX.1 dev (guidance-distilled) 512, schnell
    (no guidance embedding) 256."""
    return FLUX_T5_TOKENS if guidance_embeds else FLUX_SCHNELL_T5_TOKENS


def t5_length(tokenizer, most: int) -> int:
    """How many tokens T5 reads: its tokenizer's model_max_length, at most `most` (the model's: SD3 256, Flux dev 512,
    schnell 256)."""
    return int(min(tokenizer.model_max_length, most))


class FluxAdapter(FamilyAdapter):
    """Flux, as its pipeline conditions the transformer: CLIP-L's pooled output (its final-norm state at the end
    token, no projection) and T5's last hidden state over `t5_length` tokens, the prompt's run padded with
    <pad>. The transformer reads 2×2 patches of the latents as a sequence, with position ids for both."""

    family = Family.FLUX
    runs_negative = False

    def __init__(self, t5_tokens: int = FLUX_T5_TOKENS):
        self.t5_tokens = t5_tokens  # flux_t5_tokens: 512 for dev, 256 for schnell

    def encode(self, encoders, ids, clip_skip=1, weights=None, per_prompt=True):
        hidden = pooled = None
        for i, (enc, enc_ids) in enumerate(zip(encoders, ids)):
            if enc.key == "t5":
                extra = t5_length(enc.tokenizer, self.t5_tokens) - enc_ids.shape[1]
                enc_ids = torch.nn.functional.pad(enc_ids, (0, extra), value=enc.tokenizer.pad_token_id)
                w = None if weights is None else torch.nn.functional.pad(weights[i], (0, extra), value=1.0)
                hidden = _emphasize(enc.model(enc_ids).last_hidden_state, None if w is None else [w], 0, per_prompt)
            else:
                # CLIPTextModel's pooler_output, taken at the first end token: placeholder ids are above the
                # vocabulary, where the pooler's legacy argmax would look for the end
                out = enc.model(enc_ids)
                pooled = out.last_hidden_state[torch.arange(len(enc_ids)), _eos_positions(enc_ids, enc.tokenizer.eos_token_id)]
        return Conditioning(hidden, pooled)

    def predict(self, unet, x, timesteps, cond, height, width):
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        self._check_sides(h, w)
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        text_ids = torch.zeros(cond.hidden.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = torch.full((b,), FLUX_TRAINING_GUIDANCE, device=x.device) if unet.config.guidance_embeds else None
        out = unet(packed, timestep=timesteps / 1000, guidance=guidance, pooled_projections=cond.pooled,
                   encoder_hidden_states=cond.hidden, txt_ids=text_ids, img_ids=image_ids).sample
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)

    def pipeline_latents(self, latents):
        from diffusers import FluxPipeline

        self._check_sides(*latents.shape[-2:])
        return FluxPipeline._pack_latents(latents, *latents.shape)

    def _check_sides(self, h: int, w: int) -> None:
        # the transformer reads 2×2 latent patches: 16 px (spec.size_multiple), what the settings checks also hold to
        spec = self.family.spec
        if (h * 8) % spec.size_multiple or (w * 8) % spec.size_multiple:
            raise TitkError(f"an image of {w * 8}×{h * 8} px: {spec.label} needs sides in multiples of {spec.size_multiple} px")

    def pipeline_kwargs(self, cond, negative):
        # The pipeline's guidance_scale is Flux dev's distilled guidance; a negative prompt is run only for true
        # classifier-free guidance (sampling's true_cfg, for a Flux model not guidance-distilled)
        given = {"prompt_embeds": cond.hidden, "pooled_prompt_embeds": cond.pooled}
        if negative is not None:
            given |= {"negative_prompt_embeds": negative.hidden, "negative_pooled_prompt_embeds": negative.pooled}
        return given


def adapter_for(family: Family, denoiser_config=None) -> FamilyAdapter:
    """The family's adapter for a denoiser of `denoiser_config` (an SD3 transformer's joint_attention_dim, a Flux
    one's guidance embedding: dev or schnell)."""
    config = denoiser_config or {}
    if family is Family.FLUX:
        return FluxAdapter(flux_t5_tokens(config.get("guidance_embeds", True)))
    if family is Family.SD3:
        return SD3Adapter(config.get("joint_attention_dim"))
    return SDXLAdapter() if family is Family.SDXL else SDAdapter(family)
