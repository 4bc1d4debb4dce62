"""Pretraining the toy world's models: a small pipeline of each family trained from scratch on the world.

    titk toyworld pretrain --out titk/toyworld/weights
    titk toyworld pretrain --family sdxl --out titk/toyworld/weights/sdxl

1. Render the pretraining set: every pretraining identity in random looks, with captions that name them,
   describe them, or both (so the text encoder learns the attribute words as well as the names).
2. Train the toy vision model (the world's ArcFace and zero-shot CLIP).
3. Train the VAE (3 blocks: 64 px images become 16×16×4 latents) and set its latent scaling factor to
   1 / std of the latents, as SD's 0.18215 was chosen.
4. Train the UNet and the text encoders together on the latents (DDPM, SD's noise schedule, ε target; SD3:
   flow matching with logit-normal timesteps; 10 % empty captions for classifier-free guidance, EMA weights),
   checking every so often how well the vision model recognises the named identity in samples.
5. Save the EMA pipeline as a diffusers folder in fp16, the vision model, and a JSON record of the run.

A family other than SD1 (`architectures.py`) skips steps 2 and 3: it reuses the SD1 world's vision model and
VAE, so every family is scored by the same eyes and decodes the same latents.

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

from ..config import CONTEXT_TOKENS, PretrainSettings
from ..devices import cpu_has_fast_bf16
from .architectures import ARCHITECTURES, VAE_CONFIG, denoiser_of, encoders_of, tokenizers_of
from .proofs import toy_sampling
from .vision import HEADS, accuracy, load_vision, to_tensor, train_vision
from .world import IDENTITY_ATTRIBUTES, caption, identities, sample

def render_set(settings: PretrainSettings):
    pre, _ = identities()
    rng = random.Random(f"pretrain:{settings.seed}")
    partial = random.Random(f"partial:{settings.seed}")  # its own draws: the images stay those of a full-caption run
    images, captions, owners = [], [], []
    for person in pre:
        for _ in range(settings.images_per_identity):
            img, look, text = sample(person, rng)
            if partial.random() < settings.partial_captions:
                leave_out = frozenset(part for part in ("framing", "clothing", "background") if partial.random() < 0.5)
                text = caption(person, look, partial, leave_out=leave_out)
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
    # bf16 where the CPU computes it (the shipped world was trained so, with AMX); emulated elsewhere, where it
    # made a step ten times slower than fp32 (measured on an AMD EPYC without AVX512-BF16)
    fast_bf16 = cpu_has_fast_bf16()
    for step in range(settings.vae_steps):
        x = _to_unit(pixels[torch.randint(0, len(pixels), (32,), generator=gen)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16):
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
    means, stds = _latents_of(vae, pixels)
    with torch.no_grad():
        recon = vae.decode(means[:256]).sample
        mse = float((recon - _to_unit(pixels[:256])).pow(2).mean())
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae: reconstruction MSE {mse:.4f}, latent std {means.std():.3f} → scaling factor {scaling:.4f}")
    return vae, means, stds, {"vae_reconstruction_mse": mse, "scaling_factor": scaling, "vae_precision": "bf16" if fast_bf16 else "fp32"}


@torch.no_grad()
def identity_accuracy(pipe, vision, people, seeds=(1, 2), steps: int = 20) -> float:
    """Share of identity attributes the vision model reads correctly in samples of "a photo of <name>"."""
    from ..models.loading import bundle_from_pipeline
    from ..models.sampling import generate

    bundle = bundle_from_pipeline(copy.deepcopy(pipe), name="toy", source="memory")
    prompts = [f"a photo of {p.name}" for p in people for _ in seeds]
    sampling = toy_sampling(bundle, steps, batch_size=16)
    images = generate(bundle, prompts, [s for _ in people for s in seeds], sampling)
    out = vision(to_tensor(images))
    hits, total = 0, 0
    for i, person in enumerate(p for p in people for _ in seeds):
        for name, options in IDENTITY_ATTRIBUTES.items():
            hits += int(out[name][i].argmax()) == options.index(getattr(person, name))
            total += 1
    return hits / total


def _latents_of(vae, pixels):
    with torch.no_grad():
        dists = [vae.encode(_to_unit(pixels[i : i + 256])).latent_dist for i in range(0, len(pixels), 256)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def _token_ids(captions, tokenizers) -> list[torch.Tensor]:
    """Each encoder's ids of every caption, with the empty caption last (each encoder pads its own way)."""
    return [tokenizer(captions + [""], padding="max_length", max_length=CONTEXT_TOKENS, truncation=True,
                      return_tensors="pt").input_ids for tokenizer in tokenizers]


def train_diffusion(means, stds, captions, settings: PretrainSettings, vae, vision, eval_people, log, checkpoint=None, start=None):
    """The UNet and text encoders trained together on the latents, conditioned exactly as titk conditions the
    family when it trains a TI and samples (the family adapter's `encode` and `predict`)."""
    from ..models.bundle import TextEncoderSlot
    from ..models.families import Family, adapter_for
    from ..models.objectives import FlowMatchObjective, objective_for

    arch = ARCHITECTURES[settings.family]
    family = Family(settings.family)
    if start is not None:
        unet, encoders, tokenizers = start
    else:
        tokenizers = arch.tokenizers(captions)
        unet, encoders = arch.build(settings.seed, len(tokenizers[-1]))
    adapter = adapter_for(family, unet.config)
    slots = [TextEncoderSlot(spec.key, tok, enc) for spec, tok, enc in zip(family.spec.encoders, tokenizers, encoders)]
    ids = _token_ids(captions, tokenizers)
    empty = [i[-1] for i in ids]
    ids = [i[:-1] for i in ids]
    objective = objective_for(family, arch.scheduler().config, "epsilon")
    if settings.timestep_weighting and family.spec.flow_matching:
        objective = FlowMatchObjective(arch.scheduler().config, settings.timestep_weighting)
    if family.spec.flow_matching:
        log(f"flow matching, σ drawn with weighting {objective.weighting}")
    modules = [unet, *encoders]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    warmup = 200

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.unet_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    emas = [copy.deepcopy(m).requires_grad_(False) for m in modules]
    gen = torch.Generator().manual_seed(settings.seed + 3)
    scaling = vae.config.scaling_factor
    size = 64
    history = []
    started = time.monotonic()
    last = min(settings.stop_at or settings.unet_steps, settings.unet_steps)
    for step in range(last):
        for m in modules:
            m.train()
        idx = torch.randint(0, len(means), (settings.batch_size,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        drop = torch.rand(settings.batch_size, generator=gen) < settings.caption_dropout
        if family.spec.zero_empty_negative:  # SDXL learns "no caption" as zero conditioning, as it samples it
            cond = adapter.encode(slots, [i[idx] for i in ids])
            keep = (~drop).to(cond.hidden.dtype)
            cond.hidden = cond.hidden * keep[:, None, None]
            cond.pooled = cond.pooled * keep[:, None]
        else:
            cond = adapter.encode(slots, [torch.where(drop[:, None], e, i[idx]) for i, e in zip(ids, empty)])
        noise = torch.randn(latents.shape, generator=gen)
        t = objective.draw(settings.batch_size, gen)
        noisy = objective.noisy(latents, noise, t)
        pred = adapter.predict(unet, noisy, t, cond, size, size)
        loss = (pred - objective.target(latents, noise, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(settings.ema, (1 + step) / (10 + step))
            for ema, live in zip(emas, modules):
                for e, p in zip(ema.parameters(), live.parameters()):
                    e.lerp_(p, 1 - decay)
        if step % 50 == 0:
            log(f"unet step {step}: loss {loss.item():.4f}  ({time.monotonic() - started:.0f} s)")
        if (step + 1) % settings.eval_every == 0 or step == last - 1:
            pipe = arch.pipeline(vae, emas[0], emas[1:], tokenizers)
            acc = identity_accuracy(pipe, vision, eval_people)
            history.append({"step": step + 1, "loss": loss.item(), "identity_attribute_accuracy": acc, "seconds": time.monotonic() - started})
            log(f"unet step {step + 1}: identity attributes read correctly in samples: {acc:.2%}")
            if checkpoint:
                checkpoint(pipe, history)
    return arch.pipeline(vae, emas[0], emas[1:], tokenizers), history


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


def _continue(folder: Path, pixels, out: Path, record: dict, settings: PretrainSettings):
    """The VAE, vision model, UNet and text encoders of a saved toy model, and the latents of the images."""
    import shutil

    earlier = json.loads((folder.parent / "toyworld.json").read_text()) if (folder.parent / "toyworld.json").is_file() else {}
    record.update({k: v for k, v in earlier.items() if k not in ("settings", "history", "total_seconds")})
    record["earlier_history"] = earlier.get("history", [])
    record["continued_from"] = {"settings": earlier.get("settings"), "seconds": earlier.get("total_seconds")}
    pipe = ARCHITECTURES[settings.family].load(folder)
    if settings.family == "sd1":
        vision_file = folder.parent / "vision.safetensors"
        if (out / "vision.safetensors").resolve() != vision_file.resolve():
            shutil.copy(vision_file, out / "vision.safetensors")
    else:
        record["shared_from"] = settings.shared_from or earlier.get("shared_from")
        vision_file = _shared_world(record["shared_from"]) / "vision.safetensors"
    means, stds = _latents_of(pipe.vae, pixels)
    encoders = encoders_of(pipe)
    for module in (denoiser_of(pipe), *encoders):
        module.requires_grad_(True)
    return pipe.vae, load_vision(vision_file), (denoiser_of(pipe), encoders, tokenizers_of(pipe)), means, stds


def _shared_world(folder: str | None) -> Path:
    from ..paths import toyworld_model

    return Path(folder) if folder else toyworld_model("sd1").parent


def _shared_parts(settings: PretrainSettings, pixels, record: dict):
    """A new family reuses the world's vision model and VAE (from `settings.shared_from`, the shipped SD1 toy
    world by default), so that every family's samples are scored by the same eyes and decoded the same way."""
    from diffusers import AutoencoderKL

    world = _shared_world(settings.shared_from)
    vision = load_vision(world / "vision.safetensors")
    vae = AutoencoderKL.from_pretrained(world / "model" / "vae", dtype=torch.float32)
    means, stds = _latents_of(vae, pixels)
    record["shared_from"] = settings.shared_from  # None: the installed titk's own world, wherever it is
    record["scaling_factor"] = vae.config.scaling_factor
    return vae, vision, means, stds


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
        vae, vision, start, means, stds = _continue(Path(settings.continue_from), pixels, out, record, settings)
        log(f"continuing from {settings.continue_from}")
    elif settings.family != "sd1":
        vae, vision, means, stds = _shared_parts(settings, pixels, record)
        log(f"{settings.family}: the vision model and VAE of {record['shared_from'] or 'the shipped SD1 world'}")
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
