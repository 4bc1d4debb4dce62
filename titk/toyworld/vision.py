"""The toy world's vision model: one small CNN that plays the part of both ArcFace and zero-shot CLIP.

It predicts whether a person is in the image, the person's identity attributes (face shape, skin, hair
colour, hair style, eyes) and the personality attributes (clothing, its colour, background, framing).
Trained on rendered images with blur, noise and colour jitter, so that it also reads imperfect generated
samples.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TitkError
from .world import IDENTITY_ATTRIBUTES, PERSONALITY_ATTRIBUTES, Identity, random_look, render

HEADS = {"person": ["no", "yes"], **IDENTITY_ATTRIBUTES, **PERSONALITY_ATTRIBUTES}


class ToyVision(nn.Module):
    def __init__(self, width: int = 24):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width), block(4 * width, 4 * width))
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, 192), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(192, len(labels)) for name, labels in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(x))
        return {name: head(h) for name, head in self.heads.items()}


def to_tensor(images) -> torch.Tensor:
    """PIL images → [B, 3, 64, 64] in [-1, 1] (other sizes are resized)."""
    arrays = [np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32) for img in images]
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def _degrade(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Blur, noise and colour shifts of varying strength, like a small diffusion model's samples."""
    b = x.shape[0]
    strength = torch.rand(b, 1, 1, 1, generator=rng)
    blurred = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.where(torch.rand(b, 1, 1, 1, generator=rng) < 0.5, x, blurred)
    x = x * (1 + 0.15 * torch.randn(b, 3, 1, 1, generator=rng)) + 0.1 * torch.randn(b, 3, 1, 1, generator=rng)
    x = x + strength * 0.25 * torch.randn(x.shape, generator=rng)
    return x.clamp(-1.5, 1.5)


def training_batch(people: list[Identity], n: int, rng: random.Random):
    """Rendered images with their labels; about one in eight shows no person (an empty scene or noise)."""
    images, labels = [], {name: [] for name in HEADS}
    for _ in range(n):
        look = random_look(rng)
        kind = rng.random()
        if kind < 0.08:
            from PIL import Image

            images.append(render(None, look, rng.randrange(2**31)) if kind < 0.05 else Image.fromarray(
                np.random.default_rng(rng.randrange(2**31)).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
            labels["person"].append(0)
            for name in HEADS:
                if name != "person":
                    labels[name].append(-100)  # no person: attributes are not asked
            continue
        person = rng.choice(people)
        images.append(render(person, look, rng.randrange(2**31)))
        labels["person"].append(1)
        for name, options in IDENTITY_ATTRIBUTES.items():
            labels[name].append(options.index(getattr(person, name)))
        for name, options in PERSONALITY_ATTRIBUTES.items():
            labels[name].append(options.index(getattr(look, name)))
    return to_tensor(images), {k: torch.tensor(v) for k, v in labels.items()}


def train_vision(people: list[Identity], steps: int = 1500, batch: int = 96, seed: int = 0, log=print) -> ToyVision:
    torch.manual_seed(seed)
    rng, noise = random.Random(f"vision:{seed}"), torch.Generator().manual_seed(seed)
    model = ToyVision()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    model.train()
    for step in range(steps):
        x, y = training_batch(people, batch, rng)
        out = model(_degrade(x, noise))
        loss = sum(loss_fn(out[name], y[name]) for name in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vision step {step}: loss {loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: ToyVision, people: list[Identity], n: int = 512, seed: int = 1) -> dict[str, float]:
    x, y = training_batch(people, n, random.Random(f"vision-eval:{seed}"))
    out = model.eval()(x)
    acc = {}
    for name in HEADS:
        mask = y[name] != -100
        acc[name] = float((out[name].argmax(1)[mask] == y[name][mask]).float().mean())
    return acc


WEIGHTS = Path(__file__).resolve().parent / "weights"


@lru_cache(maxsize=2)
def load_vision(path: str | Path | None = None) -> ToyVision:
    from safetensors.torch import load_file

    path = Path(path or WEIGHTS / "vision.safetensors")
    if not path.is_file():
        raise TitkError(f"{path}: the toy world's vision model is missing; build it with `titk toyworld pretrain`")
    model = ToyVision()
    state = load_file(str(path))
    model.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in state.items()})
    return model.eval().requires_grad_(False)
