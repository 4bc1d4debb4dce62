"""What loading a diffusers pipeline from a folder (loading.py) and from a single file (single_file.py) share:
the shipped config folders, the pipeline class of a family and what it is built with."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch

from .families import Family


def shipped_config(name: str) -> Path:
    """One of the per-family config folders inside the package: sd1, sd2, sd2-v, sdxl, sd3, flux."""
    return Path(str(importlib.resources.files("titk.models").joinpath("configs", name)))


def pipeline_class(family: Family):
    import diffusers

    return getattr(diffusers, family.spec.pipeline_class)


def sd_only_kwargs(family: Family) -> dict:
    if family.spec.pipeline_class != "StableDiffusionPipeline":
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def keep_vae_safe(pipe, family: Family, dtype: torch.dtype) -> None:
    # The SDXL VAE overflows in fp16 (black images, NaN latents); bf16 and fp32 are safe.
    if family is Family.SDXL and dtype == torch.float16:
        pipe.vae.to(torch.float32)
