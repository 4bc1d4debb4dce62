"""The latent cache: each image is VAE-encoded once per (VAE, size, resize mode) and kept on disk.

What is stored is the VAE posterior (mean and std), from which all three of A1111's latent sampling
modes follow without encoding again: `deterministic` takes the mean, `once` one sample drawn with a
generator seeded by the run's seed and the image hash (so it stays fixed for the run), `random` a new
sample every time the image is used. Keys hold the image's sha256, so a changed image is encoded anew.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .dataset import Dataset, alpha_weight, kohya_alpha_weight, prepare_pixels

SAMPLING_MODES = ("once", "deterministic", "random")

ENCODE_BATCH = 4  # images per VAE encoder call (the latents do not depend on it)


@dataclass
class CachedLatent:
    mean: torch.Tensor  # [4, h, w], unscaled VAE posterior mean
    std: torch.Tensor
    weight: torch.Tensor | None  # alpha loss weight at the latent grid, [h, w]
    size: tuple[int, int]  # pixel (width, height) the image was encoded at
    size_ids: tuple[int, ...] = ()  # SDXL's original size, crop and target size for it (dataset.size_ids; set by training)


class LatentCache:
    def __init__(self, root: str | Path, bundle):
        self.bundle = bundle
        self.root = Path(root) / bundle.vae_fingerprint

    def _path(self, sha: str, mode: str, size: tuple[int, int]) -> Path:
        # Bucket latents cached before buckets took kohya's resampling filters must not be reused.
        key = "buckets-kohya" if mode == "buckets" else mode
        return self.root / f"{sha[:32]}-{key}-{size[0]}x{size[1]}.safetensors"

    def load_or_encode(
        self, dataset: Dataset, sizes: list[tuple[int, int]], resize_mode: str, *, use_alpha: bool,
        alpha: str = "a1111", batch_size: int = ENCODE_BATCH, progress=None,
    ) -> list[CachedLatent]:
        """Latents of every record at its size; encodes (in batches of equal size) only what is missing.
        With `use_alpha`, each image's loss weight as `alpha` ("a1111" or "kohya") computes it."""
        out: list[CachedLatent | None] = [None] * len(dataset)
        todo: dict[tuple[int, int], list[int]] = {}
        for i, (rec, size) in enumerate(zip(dataset.records, sizes)):
            path = self._path(rec.sha256, resize_mode, size)
            if path.is_file():
                try:
                    t = load_file(str(path))
                    out[i] = CachedLatent(t["mean"], t["std"], None, size)
                    continue
                except Exception:  # a damaged cache entry is simply encoded again
                    path.unlink(missing_ok=True)
            todo.setdefault(size, []).append(i)
        total = sum(len(v) for v in todo.values())
        task = progress.add_task("encoding latents", total=total, status="") if progress and total else None
        for size, indices in todo.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                pixels = torch.stack([prepare_pixels(dataset.records[i], size, resize_mode)[0] for i in chunk])
                mean, std = self._encode(pixels)
                for j, i in enumerate(chunk):
                    self._store(self._path(dataset.records[i].sha256, resize_mode, size), mean[j], std[j])
                    out[i] = CachedLatent(mean[j], std[j], None, size)
                if task is not None:
                    progress.advance(task, len(chunk))
        if use_alpha:
            for i, rec in enumerate(dataset.records):
                if rec.has_alpha:
                    _, alpha_image = prepare_pixels(rec, sizes[i], resize_mode)
                    h, w = out[i].mean.shape[-2:]
                    weigh = kohya_alpha_weight if alpha == "kohya" else alpha_weight
                    out[i].weight = weigh(alpha_image, (w, h))
        return out

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.bundle.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mean.float().cpu(), dist.std.float().cpu()

    def _store(self, path: Path, mean: torch.Tensor, std: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp))
        os.replace(tmp, path)


def image_generator(seed: int, sha: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + int(sha[:12], 16)) % (2**63))


def sample_latent(latent: CachedLatent, mode: str, scaling: float, seed: int, sha: str, generator: torch.Generator,
                  shift: float = 0.0) -> torch.Tensor:
    """A scaled latent under A1111's sampling modes (see the module docstring); `shift`: the VAE's shift
    factor (SD3, Flux), subtracted before scaling as their pipelines do."""
    if mode == "deterministic":
        z = latent.mean
    else:
        gen = image_generator(seed, sha) if mode == "once" else generator
        z = latent.mean + latent.std * torch.randn(latent.mean.shape, generator=gen)
    return (z - shift) * scaling
