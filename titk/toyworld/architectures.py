"""The toy world's model architectures, one per family, small enough to pretrain on 2 CPU cores.

Every family shares the world's VAE (64 px images become 16×16×4 latents) and its vision model; what
differs is the denoiser and the text encoders, built here at toy size but with each family's layout:

- sd1: a UNet with cross-attention at 16×16 and 8×8, one CLIP text encoder (96 wide).
- sdxl: SDXL's layout: no attention at the top level, linear projections, the added "text_time" conditioning
  (CLIP-G's pooled projection and six size/crop ids), and two text encoders of different widths side by
  side: a CLIP-L-like one (48 wide, OpenAI's quick-GELU, pads with the end token) and a CLIP-G-like one
  (80 wide, GELU, with a text projection, pads with "!").
- sd3: SD3's layout: an MMDiT (`SD3Transformer2DModel`, joint attention over image patches and text tokens)
  trained by flow matching, CLIP-L-like and CLIP-G-like encoders (both with projections, as in SD3) and a
  T5-style encoder (gated-GELU, relative positions) whose subword tokenizer is trained on the world's captions
  with the `tokenizers` library, as T5's SentencePiece vocabulary was trained on its corpus.
- flux: Flux's layout: a `FluxTransformer2DModel` (double-stream blocks, then single-stream ones, rotary
  positions, 2×2 latent patches) trained by flow matching, conditioned on a CLIP-L-like encoder's pooled output
  and the T5-style encoder's sequence (SD3's T5 and tokenizer recipe). Like FLUX.1 schnell it has no guidance
  embedding: a toy cannot be guidance-distilled, and titk samples Flux without a negative pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import CONTEXT_TOKENS
from ..families import PAD_END, PAD_EXCLAMATION

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64,
)
_TEXT = dict(vocab_size=49408, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=CONTEXT_TOKENS,
             bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[64, 128, 128],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=96, attention_head_dim=8, norm_num_groups=32,
)
TEXT_CONFIG = dict(_TEXT, hidden_size=96, intermediate_size=384, hidden_act="quick_gelu")

SDXL_TEXT_L = dict(_TEXT, hidden_size=48, intermediate_size=192, hidden_act="quick_gelu")
SDXL_TEXT_G = dict(_TEXT, hidden_size=80, intermediate_size=320, hidden_act="gelu", projection_dim=80)
SDXL_TIME_EMBED = 16
SDXL_UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[64, 128, 128],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 1, 1], attention_head_dim=8, use_linear_projection=True,
    cross_attention_dim=SDXL_TEXT_L["hidden_size"] + SDXL_TEXT_G["hidden_size"],
    addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED,
    projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED + SDXL_TEXT_G["projection_dim"], norm_num_groups=32,
)

SD3_TEXT_L = dict(SDXL_TEXT_L, projection_dim=48)
SD3_TEXT_G = SDXL_TEXT_G
# T5 v1.1's layout (gated GELU, relative position buckets, no biases), 128 wide: at least the two CLIP widths
# side by side, which SD3 pads to T5's width.
SD3_T5 = dict(d_model=128, d_kv=32, d_ff=256, num_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, relative_attention_max_distance=64, dropout_rate=0.0,
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
SD3_TRANSFORMER_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=6, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=SD3_T5["d_model"], caption_projection_dim=128,
    pooled_projection_dim=SD3_TEXT_L["projection_dim"] + SD3_TEXT_G["projection_dim"], pos_embed_max_size=16,
)
# SD3 trains at 1024 px with shift 3 (the SD3 paper: more noise for more pixels); the toy's 16×16 latents are
# the smallest resolution, where the paper uses no shift.
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0)
T5_VOCAB = 400

FLUX_TEXT_L = SDXL_TEXT_L  # Flux reads CLIP-L's pooled output (its final-norm state at the end token), no projection
FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=16, num_layers=3, num_single_layers=6, attention_head_dim=32, num_attention_heads=4,
    joint_attention_dim=SD3_T5["d_model"], pooled_projection_dim=FLUX_TEXT_L["hidden_size"], guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)
# FLUX.1 dev's scheduler: unshifted in training, shifted by the image's token count when sampling.
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)


@dataclass(frozen=True)
class ToyArchitecture:
    family: str
    unet: dict
    texts: tuple[dict, ...]  # one config per text encoder, in the family's encoder order
    pads: tuple[str, ...]
    projected: tuple[bool, ...] = field(default=(False,))  # CLIPTextModelWithProjection (SDXL's second encoder)
    t5: dict | None = None  # a T5 encoder's config after the CLIP ones (SD3, Flux)

    def build(self, seed: int, vocab_size: int | None = None):
        """A new denoiser and text encoders with random weights, each seeded on its own (`vocab_size`: the
        T5 tokenizer's, for a family with T5)."""
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

        torch.manual_seed(seed + 1)
        denoiser = {"sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}.get(self.family, UNet2DConditionModel)
        unet = denoiser(**self.unet)
        if self.family == "flux":  # Flux's config names no size (1024 px); the toy's is 64 px, 16×16 latents
            unet.register_to_config(sample_size=16)
        encoders = []
        for i, (config, projected) in enumerate(zip(self.texts, self.projected)):
            torch.manual_seed(seed + 2 + i)
            cls = CLIPTextModelWithProjection if projected else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**config)))
        if self.t5 is not None:
            torch.manual_seed(seed + 2 + len(self.texts))
            encoders.append(T5EncoderModel(T5Config(vocab_size=vocab_size, **self.t5)))
        return unet, encoders

    def tokenizers(self, captions: list[str] | None = None) -> list:
        """Each encoder's tokenizer: CLIP's, built offline; T5's trained on `captions` (the world's)."""
        from ..models.tokenizer import clip_tokenizer, t5_tokenizer

        t5 = [t5_tokenizer(captions, T5_VOCAB)] if self.t5 is not None else []
        return [clip_tokenizer(pad) for pad in self.pads] + t5

    def scheduler(self):
        """The sampler the pipeline ships with (and whose config gives the training objective)."""
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        flow = {"sd3": SD3_SCHEDULER, "flux": FLUX_SCHEDULER}.get(self.family)
        if flow is not None:
            return FlowMatchEulerDiscreteScheduler(**flow)
        return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

    def pipeline(self, vae, unet, encoders, tokenizers=None):
        """The diffusers pipeline of this family around the parts (`tokenizers`: needed for a T5 family)."""
        from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

        from ..models.fixtures import shipped_scheduler

        if tokenizers is None and self.t5 is not None:
            raise ValueError(f"a {self.family} toy pipeline needs its trained T5 tokenizer (tokenizers=)")
        tokenizers = tokenizers or self.tokenizers()
        if self.t5 is not None and vae.config.get("shift_factor") is None:  # the pipeline decodes latents / scale + shift
            vae.register_to_config(shift_factor=0.0)
        if self.family == "flux":
            return FluxPipeline(scheduler=self.scheduler(), vae=vae, text_encoder=encoders[0], tokenizer=tokenizers[0],
                                text_encoder_2=encoders[1], tokenizer_2=tokenizers[1], transformer=unet)
        if self.family == "sd3":
            return StableDiffusion3Pipeline(
                transformer=unet, scheduler=self.scheduler(), vae=vae, text_encoder=encoders[0], tokenizer=tokenizers[0],
                text_encoder_2=encoders[1], tokenizer_2=tokenizers[1], text_encoder_3=encoders[2], tokenizer_3=tokenizers[2],
            )
        if self.family == "sdxl":
            return StableDiffusionXLPipeline(
                vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
                tokenizer_2=tokenizers[1], unet=unet, scheduler=shipped_scheduler("sdxl"),
            )
        return StableDiffusionPipeline(
            vae=vae, text_encoder=encoders[0], tokenizer=tokenizers[0], unet=unet, scheduler=shipped_scheduler("sd1"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def load(self, folder):
        """The saved pipeline of this family, in fp32."""
        from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

        from ..models.loading import quiet_libraries

        with quiet_libraries():
            if self.family == "flux":
                return FluxPipeline.from_pretrained(folder, dtype=torch.float32)
            if self.family == "sd3":
                return StableDiffusion3Pipeline.from_pretrained(folder, dtype=torch.float32)
            if self.family == "sdxl":
                return StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32)
            return StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None, requires_safety_checker=False)


ARCHITECTURES = {
    "sd1": ToyArchitecture("sd1", UNET_CONFIG, (TEXT_CONFIG,), (PAD_END,)),
    "sdxl": ToyArchitecture("sdxl", SDXL_UNET_CONFIG, (SDXL_TEXT_L, SDXL_TEXT_G), (PAD_END, PAD_EXCLAMATION), (False, True)),
    "sd3": ToyArchitecture("sd3", SD3_TRANSFORMER_CONFIG, (SD3_TEXT_L, SD3_TEXT_G), (PAD_END, PAD_EXCLAMATION), (True, True), SD3_T5),
    "flux": ToyArchitecture("flux", FLUX_TRANSFORMER_CONFIG, (FLUX_TEXT_L,), (PAD_END,), (False,), SD3_T5),
}


def encoders_of(pipe) -> list:
    """The text encoders of a toy pipeline, in the family's order."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [m for m in (getattr(pipe, n, None) for n in names) if m is not None]


def tokenizers_of(pipe) -> list:
    names = ("tokenizer", "tokenizer_2", "tokenizer_3")
    return [t for t in (getattr(pipe, n, None) for n in names) if t is not None]


def denoiser_of(pipe):
    return getattr(pipe, "transformer", None) or pipe.unet
