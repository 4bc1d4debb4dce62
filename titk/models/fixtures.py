"""Offline models with random weights: tiny SD-architecture pipelines for tests and demos, and the
full-size SD1.5 architecture for benchmarks.

Everything is built from code and a seed, with the real CLIP tokenizer, so no hub is needed. The tiny
pipelines are saved both as diffusers folders and as single-file checkpoints in the original LDM layout
(.safetensors and .ckpt), so tests load them through exactly the routes real checkpoints take.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .families import Family
from .ldm import pipeline_to_ldm
from ..config import CONTEXT_TOKENS
from ..families import PAD_END, PAD_EXCLAMATION
from .tokenizer import clip_tokenizer

TINY_CLIP = dict(
    vocab_size=49408, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=CONTEXT_TOKENS, layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 64, 64], layers_per_block=1,
    latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
)
TINY_UNET_SD = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
)
TINY_UNET_SDXL = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2], attention_head_dim=[2, 4], cross_attention_dim=96,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=32,
)


def shipped_scheduler(name: str):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    from .loading import shipped_config

    config = json.loads((shipped_config(name) / "scheduler" / "scheduler_config.json").read_text())
    cls = {"PNDMScheduler": PNDMScheduler, "DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}
    return cls[config.pop("_class_name")].from_config(config)

TINY_SD3 = dict(
    sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
    num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16,
)
TINY_T5 = dict(d_model=128, d_kv=16, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
               relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# The tiny SD3 fixture's T5 tokenizer is trained on these (titk has no T5 vocabulary it may ship).
TINY_T5_CORPUS = [
    "a photo of a person", "a portrait of a woman with red hair", "a man wearing a tank top, outdoors",
    "a close-up photo of a face, smiling", "a full-body photo in the city", "an old man with grey hair and a beard",
]


def build_tiny_pipeline(family: Family | str = Family.SD1, *, prediction_type: str = "epsilon", seed: int = 0):
    """A deterministic tiny pipeline of `family` with random weights (about 3.5 M parameters)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = Family(family)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE)
    if family is Family.SD3:
        return _tiny_sd3(vae, seed)
    if family is Family.FLUX:
        return _tiny_flux(vae, seed)
    if family is Family.SDXL:
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(**TINY_UNET_SDXL)
        torch.manual_seed(seed + 2)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", projection_dim=32, **TINY_CLIP))
        torch.manual_seed(seed + 3)
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=64, hidden_act="gelu", projection_dim=32, **TINY_CLIP)
        )
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=clip_tokenizer(PAD_END),
            tokenizer_2=clip_tokenizer(PAD_EXCLAMATION), unet=unet, scheduler=shipped_scheduler("sdxl"),
        )
    sd2 = family is Family.SD2
    torch.manual_seed(seed + 1)
    unet_config = dict(TINY_UNET_SD, use_linear_projection=True, attention_head_dim=[2, 4]) if sd2 else TINY_UNET_SD
    unet = UNet2DConditionModel(**unet_config)
    torch.manual_seed(seed + 2)
    te = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, hidden_act="gelu" if sd2 else "quick_gelu", projection_dim=32, **TINY_CLIP)
    )
    scheduler = shipped_scheduler("sd2-v" if sd2 and prediction_type == "v_prediction" else "sd2" if sd2 else "sd1")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=clip_tokenizer(PAD_EXCLAMATION if sd2 else PAD_END), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe


TINY_T5_TOKENS = 96  # T5 reads more than a CLIP chunk (SD3 256, Flux 512 or 256): the fixtures test the longer sequence


def _tiny_sd3(vae, seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from .tokenizer import t5_tokenizer

    vae.register_to_config(shift_factor=0.0609)  # SD3's VAE subtracts a shift before scaling
    torch.manual_seed(seed + 1)
    transformer = SD3Transformer2DModel(**TINY_SD3)
    torch.manual_seed(seed + 2)
    te = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", projection_dim=32, **TINY_CLIP))
    torch.manual_seed(seed + 3)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=64, hidden_act="gelu", projection_dim=32, **TINY_CLIP))
    tokenizer_3 = t5_tokenizer(TINY_T5_CORPUS, 120, TINY_T5_TOKENS)
    torch.manual_seed(seed + 4)
    te3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), **TINY_T5))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=te, tokenizer=clip_tokenizer(PAD_END), text_encoder_2=te2, tokenizer_2=clip_tokenizer(PAD_EXCLAMATION),
        text_encoder_3=te3, tokenizer_3=tokenizer_3,
    )


TINY_FLUX = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
    joint_attention_dim=128, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
)


def _tiny_flux(vae, seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .tokenizer import t5_tokenizer

    vae.register_to_config(shift_factor=0.1159)  # Flux's VAE subtracts a shift before scaling
    torch.manual_seed(seed + 1)
    transformer = FluxTransformer2DModel(**TINY_FLUX)
    transformer.register_to_config(sample_size=8)  # Flux's names no size (1024 px); the fixture's is 64 px
    torch.manual_seed(seed + 2)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", projection_dim=32, **TINY_CLIP))
    tokenizer_2 = t5_tokenizer(TINY_T5_CORPUS, 120, TINY_T5_TOKENS)
    torch.manual_seed(seed + 3)
    te2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), **TINY_T5))
    # Flux dev's scheduler: shifted per resolution when sampling, between 0.5 and 1.15 (mu)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=clip_tokenizer(PAD_END),
                        text_encoder_2=te2, tokenizer_2=tokenizer_2, transformer=transformer)


@dataclass
class FixtureFiles:
    folder: Path  # diffusers folder
    safetensors: Path  # single file, LDM layout
    ckpt: Path  # the same as a `{"state_dict": ...}` pickle of tensors


def save_fixture(pipe, out_dir: str | Path, name: str) -> FixtureFiles:
    """Write `pipe` as a diffusers folder and as single-file checkpoints in the original layout."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = FixtureFiles(out / name, out / f"{name}.safetensors", out / f"{name}.ckpt")
    from .loading import quiet_libraries

    with quiet_libraries():
        pipe.save_pretrained(files.folder, safe_serialization=True)
    state = pipeline_to_ldm(pipe)
    save_file(state, str(files.safetensors), metadata={"format": "pt"})
    torch.save({"state_dict": state, "global_step": 0}, files.ckpt)
    return files


def build_fixtures(out_dir: str | Path, seed: int = 0) -> dict[str, FixtureFiles]:
    """Every tiny fixture: tiny-sd1, tiny-sd2 (eps), tiny-sd2-v, tiny-sdxl."""
    specs = {
        "tiny-sd1": (Family.SD1, "epsilon"),
        "tiny-sd2": (Family.SD2, "epsilon"),
        "tiny-sd2-v": (Family.SD2, "v_prediction"),
        "tiny-sdxl": (Family.SDXL, "epsilon"),
    }
    return {
        name: save_fixture(build_tiny_pipeline(fam, prediction_type=pred, seed=seed), out_dir, name)
        for name, (fam, pred) in specs.items()
    }


def build_sd15_full(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0):
    """The full-size SD1.5 architecture (UNet 859.5 M, CLIP ViT-L text 123.1 M, VAE 83.7 M) with random weights."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .loading import quiet_libraries, shipped_config

    config = shipped_config("sd1")
    torch.manual_seed(seed)
    with torch.device(device), quiet_libraries():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")).to(dtype)
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")).to(dtype)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=clip_tokenizer(PAD_END), unet=unet, scheduler=shipped_scheduler("sd1"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
