"""The embedding's own vector norms (learned TI vectors can grow to many times the vocabulary's norms)."""

from __future__ import annotations

import numpy as np

from . import Sample, Scorer


class NormScorer(Scorer):
    name = "norms"

    def __init__(self):
        self.embedding = None

    def score(self, samples: list[Sample], ctx) -> tuple[list[dict], dict]:
        norms = {k: t.norm(dim=1).tolist() for k, t in ctx.embedding.vectors.items()}
        flat = np.array([n for v in norms.values() for n in v])
        ctx.extras["vector_norms"] = norms
        summary = {"norms.mean": float(flat.mean()), "norms.max": float(flat.max())}
        for enc in getattr(ctx, "encoders", []):
            median = float(enc.table.float().norm(dim=1).median())
            summary[f"norms.{enc.key}_vs_vocab_median"] = float(np.mean(norms[enc.key])) / median if enc.key in norms else float("nan")
        return [{} for _ in samples], summary
