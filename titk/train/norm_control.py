"""`embedding.norm: vocab`: the vectors learn a direction while their length stays at the vocabulary's.

After every optimizer update each vector is rescaled to its encoder's median token-row norm (a projection
onto that sphere; AdamW's moments stay in the free space and keep steering the direction). Free norms can
grow to many times the vocabulary's (titk/embeddings/health.py); held ones cannot, by construction.
"""

from __future__ import annotations

import torch

from ..embeddings.health import vocab_median


def norm_targets(bundle) -> dict[str, float]:
    """Each encoder's vocabulary median norm, the length its vectors are held at."""
    return {enc.key: vocab_median(enc.table) for enc in bundle.encoders}


@torch.no_grad()
def hold_norms(vectors: dict[str, torch.Tensor], targets: dict[str, float]) -> None:
    """Rescale each vector (row) to its encoder's target norm, in place. A zero vector (empty init_text)
    has no direction yet and stays zero until its first update gives it one."""
    for key, param in vectors.items():
        norms = param.norm(dim=1, keepdim=True)
        param.mul_(torch.where(norms > 0, targets[key] / norms.clamp_min(1e-12), torch.ones_like(norms)))
