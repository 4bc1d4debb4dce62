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


def toyworld_model() -> Path:
    """The toy world's pretrained model, a diffusers folder shipped inside the package."""
    from .errors import TitkError

    path = Path(__file__).resolve().parent / "toyworld" / "weights" / "model"
    if not (path / "model_index.json").is_file():
        raise TitkError(f"{path}: the toy world's model is missing; build it with `titk toyworld pretrain --out {path.parent}`")
    return path


def insightface_root() -> Path:
    """Where named face packs are looked for: <root>/models/<pack>/.

    insightface's own default root is ~/.insightface; $TITK_INSIGHTFACE_ROOT overrides it for titk.
    """
    return Path(os.environ.get("TITK_INSIGHTFACE_ROOT", Path.home() / ".insightface"))
