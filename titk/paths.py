"""Where titk keeps things on disk outside a work directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """titk's cache (hashes, built tokenizers): $TITK_CACHE, else $XDG_CACHE_HOME/titk, else ~/.cache/titk."""
    if env := os.environ.get("TITK_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "titk"


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# `model.source` names of the toy world's pretrained models, one per family.
TOY_SOURCES = {"toyworld": "sd1", "toyworld-sdxl": "sdxl", "toyworld-sd3": "sd3", "toyworld-flux": "flux"}


def toyworld_model(family: str = "sd1") -> Path:
    """The toy world's pretrained model of `family`, a diffusers folder shipped inside the package."""
    from .errors import TitkError

    weights = Path(__file__).resolve().parent / "toyworld" / "weights"
    path = weights / "model" if family == "sd1" else weights / family / "model"
    if not (path / "model_index.json").is_file():
        option = "" if family == "sd1" else f"--family {family} "
        raise TitkError(f"{path}: the toy world's {family} model is missing; build it with `titk toyworld pretrain {option}--out {path.parent}`")
    return path


def insightface_root() -> Path:
    """Where named face packs are looked for: <root>/models/<pack>/.

    insightface's own default root is ~/.insightface; $TITK_INSIGHTFACE_ROOT overrides it for titk.
    """
    return Path(os.environ.get("TITK_INSIGHTFACE_ROOT", Path.home() / ".insightface"))
