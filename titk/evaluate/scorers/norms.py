"""The embedding's own vector norms (learned TI vectors can grow to many times the vocabulary's norms)."""

from __future__ import annotations

import numpy as np

from . import Sample, ScoreResult, Scorer


class NormScorer(Scorer):
    name = "norms"

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        norms = {k: t.norm(dim=1).tolist() for k, t in ctx.embedding.vectors.items()}
        flat = np.array([n for v in norms.values() for n in v])
        summary = {"norms.mean": float(flat.mean()), "norms.max": float(flat.max())}
        for enc in getattr(ctx, "encoders", []):
            median = float(enc.table.float().norm(dim=1).median())
            summary[f"norms.{enc.key}_vs_vocab_median"] = float(np.mean(norms[enc.key])) / median if enc.key in norms else float("nan")
        return ScoreResult([{} for _ in samples], summary, extras={"vector_norms": norms})
