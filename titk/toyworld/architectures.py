"""The toy world's model architectures, one per family, small enough to pretrain on 2 CPU cores.

Every family shares the world's VAE (64 px images become 16×16×4 latents) and its vision model; what
differs is the denoiser and the text encoders, built here at toy size but with each family's layout:

- sd1: a UNet with cross-attention at 16×16 and 8×8, one CLIP text encoder (96 wide).
- sdxl: SDXL's layout: no attention at the top level, linear projections, the added "text_time" conditioning
  (CLIP-G's pooled projection and six size/crop ids), and two text encoders of different widths side by
  side: a CLIP-L-like one (48 wide, OpenAI's quick-GELU, pads with the end token) and a CLIP-G-like one
  (80 wide, GELU, with a text projection, pads with "!").
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


@dataclass(frozen=True)
class ToyArchitecture:
    family: str
    unet: dict
    texts: tuple[dict, ...]  # one config per text encoder, in the family's encoder order
    pads: tuple[str, ...]
    projected: tuple[bool, ...] = field(default=(False,))  # CLIPTextModelWithProjection (SDXL's second encoder)

    def build(self, seed: int):
        """A new UNet and text encoders with random weights, each seeded on its own."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(**self.unet)
        encoders = []
        for i, (config, projected) in enumerate(zip(self.texts, self.projected)):
            torch.manual_seed(seed + 2 + i)
            cls = CLIPTextModelWithProjection if projected else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**config)))
        return unet, encoders

    def pipeline(self, vae, unet, encoders):
        """The diffusers pipeline of this family around the parts."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from ..models.fixtures import shipped_scheduler
        from ..models.tokenizer import clip_tokenizer

        tokenizers = [clip_tokenizer(pad) for pad in self.pads]
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
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from ..models.loading import quiet_libraries

        with quiet_libraries():
            if self.family == "sdxl":
                return StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32)
            return StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None, requires_safety_checker=False)


ARCHITECTURES = {
    "sd1": ToyArchitecture("sd1", UNET_CONFIG, (TEXT_CONFIG,), (PAD_END,)),
    "sdxl": ToyArchitecture("sdxl", SDXL_UNET_CONFIG, (SDXL_TEXT_L, SDXL_TEXT_G), (PAD_END, PAD_EXCLAMATION), (False, True)),
}


def encoders_of(pipe) -> list:
    """The text encoders of a toy pipeline, in the family's order."""
    return [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
