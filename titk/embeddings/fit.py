"""Matching an embedding's tensors to a loaded model's text encoders."""

from __future__ import annotations

import torch

from ..errors import TitkError
from .embedding import Embedding


def vectors_for(emb: Embedding, bundle, where: str = "") -> dict[str, torch.Tensor]:
    """The embedding's tensor for each of the model's encoders, or an error naming both widths."""
    label = where or emb.name
    widths = {enc.key: enc.width for enc in bundle.encoders}
    if len(bundle.encoders) == 1:
        enc = bundle.encoders[0]
        if len(emb.vectors) != 1:
            raise TitkError(
                f"{label}: a {emb.family or 'multi-encoder'} embedding ({_widths(emb)}) does not fit "
                f"{bundle.name}, which has one text encoder of width {enc.width}"
            )
        tensor = emb.single
        if tensor.shape[1] != enc.width:
            raise TitkError(
                f"{label}: embedding width {tensor.shape[1]} does not fit {bundle.name} (text encoder width {enc.width}); "
                f"it was made for another model family"
            )
        return {enc.key: tensor}
    out = {}
    needs = " and ".join(f"{k} ({w})" for k, w in widths.items())
    for enc in bundle.encoders:
        tensor = emb.vectors.get(enc.key)
        if tensor is None:
            by_width = [t for t in emb.vectors.values() if t.shape[1] == enc.width]
            tensor = by_width[0] if len(by_width) == 1 and len(emb.vectors) == len(widths) else None
        if tensor is None or tensor.shape[1] != enc.width:
            raise TitkError(f"{label}: embedding ({_widths(emb)}) does not fit {bundle.name}, which needs {needs}")
        out[enc.key] = tensor
    # A model without an optional encoder (SD3 without T5) reads the file's other tensors and leaves that one.
    absent = set(bundle.family.spec.optional_encoders) - set(widths)
    if len(set(emb.vectors) - absent) > len(out):
        # An SD3 file holds SDXL's two CLIP tensors and a T5 one: trained for another denoiser, and half-used here.
        made = f", made for {emb.family}" if emb.family else ""
        raise TitkError(f"{label}: embedding ({_widths(emb)}{made}) holds more than {bundle.name} has encoders for; it needs {needs}")
    return out


def _widths(emb: Embedding) -> str:
    return ", ".join(f"{k} {w}" for k, w in emb.widths.items())
