"""Pretraining the toy world's model: a small SD1-architecture pipeline trained from scratch on the world.

    titk toyworld pretrain --out titk/toyworld/weights

1. Render the pretraining set: every pretraining identity in random looks, with captions that name them,
   describe them, or both (so the text encoder learns the attribute words as well as the names).
2. Train the toy vision model (the world's ArcFace and zero-shot CLIP).
3. Train the VAE (3 blocks: 64 px images become 16×16×4 latents) and set its latent scaling factor to
   1 / std of the latents, as SD's 0.18215 was chosen.
4. Train the UNet and the CLIP text encoder together on the latents (DDPM, SD's noise schedule, ε target,
   10 % empty captions for classifier-free guidance, EMA weights), checking every so often how well the
   vision model recognises the named identity in samples.
5. Save the EMA pipeline as a diffusers folder in fp16, the vision model, and a JSON record of the run.

Everything is seeded; on the same machine and library versions the run repeats.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..config import CONTEXT_TOKENS, PretrainSettings, SamplingSettings
from .vision import HEADS, accuracy, to_tensor, train_vision
from .world import IDENTITY_ATTRIBUTES, identities, sample

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64,
)
UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[64, 128, 128],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=96, attention_head_dim=8, norm_num_groups=32,
)
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=CONTEXT_TOKENS, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


def render_set(settings: PretrainSettings):
    pre, _ = identities()
    rng = random.Random(f"pretrain:{settings.seed}")
    images, captions, owners = [], [], []
    for person in pre:
        for _ in range(settings.images_per_identity):
            img, _, text = sample(person, rng)
            images.append(np.asarray(img, dtype=np.uint8))
            captions.append(text)
            owners.append(person)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, captions, owners


def _to_unit(pixels_u8: torch.Tensor) -> torch.Tensor:
    return pixels_u8.float() / 127.5 - 1.0


def train_vae(pixels: torch.Tensor, settings: PretrainSettings, log):
    from diffusers import AutoencoderKL

    torch.manual_seed(settings.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=settings.vae_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(settings.seed)
    vae.train()
    for step in range(settings.vae_steps):
        x = _to_unit(pixels[torch.randint(0, len(pixels), (32,), generator=gen)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dist = vae.encode(x).latent_dist
            recon = vae.decode(dist.sample(generator=gen)).sample
        err = recon.float() - x
        loss = err.pow(2).mean() + 0.5 * err.abs().mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == settings.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        means, stds = [], []
        for i in range(0, len(pixels), 256):
            d = vae.encode(_to_unit(pixels[i : i + 256])).latent_dist
            means.append(d.mean)
            stds.append(d.std)
        means, stds = torch.cat(means), torch.cat(stds)
        recon = vae.decode(means[:256]).sample
        mse = float((recon - _to_unit(pixels[:256])).pow(2).mean())
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae: reconstruction MSE {mse:.4f}, latent std {means.std():.3f} → scaling factor {scaling:.4f}")
    return vae, means, stds, {"vae_reconstruction_mse": mse, "scaling_factor": scaling}


def build_pipeline(vae, unet, text_encoder):
    from diffusers import StableDiffusionPipeline

    from ..models.fixtures import shipped_scheduler
    from ..models.tokenizer import clip_tokenizer

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=shipped_scheduler("sd1"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@torch.no_grad()
def identity_accuracy(pipe, vision, people, seeds=(1, 2), steps: int = 20) -> float:
    """Share of identity attributes the vision model reads correctly in samples of "a photo of <name>"."""
    from ..models.loading import bundle_from_pipeline
    from ..models.sampling import generate

    bundle = bundle_from_pipeline(copy.deepcopy(pipe), name="toy", source="memory")
    prompts = [f"a photo of {p.name}" for p in people for _ in seeds]
    sampling = SamplingSettings(steps=steps, cfg=5.0, width=64, height=64, batch_size=16)
    images = generate(bundle, prompts, [s for _ in people for s in seeds], sampling)
    out = vision(to_tensor(images))
    hits, total = 0, 0
    for i, person in enumerate(p for p in people for _ in seeds):
        for name, options in IDENTITY_ATTRIBUTES.items():
            hits += int(out[name][i].argmax()) == options.index(getattr(person, name))
            total += 1
    return hits / total


def train_diffusion(means, stds, captions, settings: PretrainSettings, vae, vision, eval_people, log, checkpoint=None, start=None):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.tokenizer import clip_tokenizer

    if start is not None:
        unet, text_encoder = start
    else:
        torch.manual_seed(settings.seed + 1)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        torch.manual_seed(settings.seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    tokenizer = clip_tokenizer()
    ids = tokenizer(captions + [""], padding="max_length", max_length=CONTEXT_TOKENS, truncation=True, return_tensors="pt").input_ids
    empty = ids[-1]
    ids = ids[:-1]
    noise_schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    warmup = 200

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.unet_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    gen = torch.Generator().manual_seed(settings.seed + 3)
    scaling = vae.config.scaling_factor
    history = []
    started = time.monotonic()
    last = min(settings.stop_at or settings.unet_steps, settings.unet_steps)
    for step in range(last):
        unet.train()
        text_encoder.train()
        idx = torch.randint(0, len(means), (settings.batch_size,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        batch_ids = ids[idx].clone()
        drop = torch.rand(settings.batch_size, generator=gen) < settings.caption_dropout
        batch_ids[drop] = empty
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (settings.batch_size,), generator=gen)
        noisy = noise_schedule.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(batch_ids).last_hidden_state).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(settings.ema, (1 + step) / (10 + step))
            for ema, live in ((ema_unet, unet), (ema_te, text_encoder)):
                for e, p in zip(ema.parameters(), live.parameters()):
                    e.lerp_(p, 1 - decay)
        if step % 50 == 0:
            log(f"unet step {step}: loss {loss.item():.4f}  ({time.monotonic() - started:.0f} s)")
        if (step + 1) % settings.eval_every == 0 or step == last - 1:
            pipe = build_pipeline(vae, ema_unet, ema_te)
            acc = identity_accuracy(pipe, vision, eval_people)
            history.append({"step": step + 1, "loss": loss.item(), "identity_attribute_accuracy": acc, "seconds": time.monotonic() - started})
            log(f"unet step {step + 1}: identity attributes read correctly in samples: {acc:.2%}")
            if checkpoint:
                checkpoint(pipe, history)
    return build_pipeline(vae, ema_unet, ema_te), history


def save_vision(vision, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: (v.half() if v.dtype.is_floating_point else v).contiguous() for k, v in vision.state_dict().items()}
    save_file(state, str(path),
              metadata={"heads": json.dumps({k: list(v) for k, v in HEADS.items()})})


def save_pipeline(pipe, folder: Path) -> None:
    from ..models.loading import quiet_libraries

    half = copy.deepcopy(pipe)
    with quiet_libraries():
        half.to(torch.float16)
        half.save_pretrained(folder, safe_serialization=True)


def _continue(folder: Path, pixels, out: Path, record: dict):
    """The VAE, vision model, UNet and text encoder of a saved toy model, and the latents of the images."""
    import shutil

    from diffusers import StableDiffusionPipeline

    from .vision import load_vision

    earlier = json.loads((folder.parent / "toyworld.json").read_text()) if (folder.parent / "toyworld.json").is_file() else {}
    record.update({k: v for k, v in earlier.items() if k not in ("settings", "history", "total_seconds")})
    record["earlier_history"] = earlier.get("history", [])
    record["continued_from"] = {"settings": earlier.get("settings"), "seconds": earlier.get("total_seconds")}
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    vision_file = folder.parent / "vision.safetensors"
    if (out / "vision.safetensors").resolve() != vision_file.resolve():
        shutil.copy(vision_file, out / "vision.safetensors")
    vision = load_vision(vision_file)
    with torch.no_grad():
        dists = [pipe.vae.encode(_to_unit(pixels[i : i + 256])).latent_dist for i in range(0, len(pixels), 256)]
    means, stds = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    pipe.unet.requires_grad_(True)
    pipe.text_encoder.requires_grad_(True)
    return pipe.vae, vision, (pipe.unet, pipe.text_encoder), means, stds


def pretrain(out: str | Path, settings: PretrainSettings | None = None, log=print) -> dict:
    settings = settings or PretrainSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings.model_dump(), "torch": torch.__version__}
    began = time.monotonic()
    pre, held = identities()

    pixels, captions, owners = render_set(settings)
    log(f"rendered {len(pixels)} images of {len(pre)} identities")
    start = None
    if settings.continue_from:
        vae, vision, start, means, stds = _continue(Path(settings.continue_from), pixels, out, record)
        log(f"continuing from {settings.continue_from}")
    else:
        vision = train_vision(pre, steps=settings.vision_steps, seed=settings.seed, log=log)
        record["vision_accuracy_pretrain_identities"] = accuracy(vision, pre)
        record["vision_accuracy_heldout_identities"] = accuracy(vision, held)
        log(f"vision accuracy on held-out identities: {record['vision_accuracy_heldout_identities']}")
        save_vision(vision, out / "vision.safetensors")
        record["vision_seconds"] = time.monotonic() - began

        vae, means, stds, vae_stats = train_vae(pixels, settings, log)
        record.update(vae_stats)
        record["vae_seconds"] = time.monotonic() - began - record["vision_seconds"]

    def checkpoint(pipe, history):
        save_pipeline(pipe, out / "model")
        record["history"] = history
        (out / "toyworld.json").write_text(json.dumps(record, indent=2))

    eval_people = pre[:8]
    pipe, history = train_diffusion(means, stds, captions, settings, vae, vision, eval_people, log, checkpoint, start)
    record["history"] = record.get("earlier_history", []) + history
    record["heldout_identities"] = [p.name for p in held]
    record["total_seconds"] = time.monotonic() - began
    save_pipeline(pipe, out / "model")
    (out / "toyworld.json").write_text(json.dumps(record, indent=2))
    log(f"done in {record['total_seconds'] / 60:.1f} min")
    return record
