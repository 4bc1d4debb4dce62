"""Embedding files: A1111 `.pt` and single-key `.safetensors` (see docs/file-formats.md).

Every write is atomic: a temporary file in the same folder, then a rename, so a crash never leaves a
half-written embedding behind.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import TitkError
from .embedding import Embedding

A1111_TOKEN = 265  # the constant `string_to_token` value A1111 writes; it means nothing


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _metadata(emb: Embedding) -> dict[str, str]:
    meta = {"name": emb.name, "step": str(emb.step), "format": "pt"}
    if emb.base_model_hash:
        meta["sd_checkpoint"] = emb.base_model_hash
    if emb.base_model_name:
        meta["sd_checkpoint_name"] = emb.base_model_name
    if emb.family:
        meta["family"] = emb.family
    meta.update(emb.extra)
    return meta


def write_a1111_pt(emb: Embedding, path: str | Path) -> Path:
    """A1111's `Embedding.save` dict, with the tensor detached, on the CPU, float32.

    An SDXL embedding has no `string_to_param` form; A1111 loads a dict holding `clip_l` and `clip_g`.
    """
    if len(emb.vectors) > 1:
        with atomic_path(path) as tmp:
            torch.save({k: v.clone() for k, v in emb.vectors.items()}, tmp)
        return Path(path)
    data = {
        "string_to_token": {"*": A1111_TOKEN},
        "string_to_param": {"*": emb.single.clone()},
        "name": emb.name,
        "step": int(emb.step),
        "sd_checkpoint": emb.base_model_hash,
        "sd_checkpoint_name": emb.base_model_name,
    }
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return Path(path)


def write_safetensors(emb: Embedding, path: str | Path) -> Path:
    """One key, the embedding's name (diffusers' convention; A1111 and ComfyUI take the single tensor),
    with name, step and base model in the file's metadata, never as extra keys. SDXL: `clip_l` + `clip_g`."""
    from safetensors.torch import save_file

    if len(emb.vectors) == 1:
        tensors = {emb.name: emb.single.clone()}
    else:
        tensors = {k: v.clone() for k, v in emb.vectors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=_metadata(emb))
    return Path(path)


WRITERS = {".pt": write_a1111_pt, ".safetensors": write_safetensors}


def save_embedding(emb: Embedding, path: str | Path) -> Path:
    path = Path(path)
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise TitkError(f"{path}: unknown embedding file type (use .pt or .safetensors)")
    return writer(emb, path)


def read_a1111_pt(path: str | Path) -> Embedding:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TitkError(f"{path}: not a readable embedding ({str(exc).splitlines()[0][:200]})") from None
    params = data.get("string_to_param") if isinstance(data, dict) else None
    if not isinstance(params, dict) or len(params) != 1:
        raise TitkError(f"{path}: not an A1111 embedding (needs exactly one entry in string_to_param)")
    return Embedding.from_single(
        str(data.get("name") or Path(path).stem), next(iter(params.values())), step=int(data.get("step") or 0),
        base_model_hash=data.get("sd_checkpoint"), base_model_name=data.get("sd_checkpoint_name"),
    )


def read_safetensors(path: str | Path) -> Embedding:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = meta.get("name") or Path(path).stem
    base = dict(step=int(meta.get("step", 0)), base_model_hash=meta.get("sd_checkpoint"), base_model_name=meta.get("sd_checkpoint_name"))
    if len(tensors) == 1:
        return Embedding.from_single(name, next(iter(tensors.values())), **base)
    return Embedding(name, tensors, **base)

