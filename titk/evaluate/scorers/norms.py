"""The embedding's own vector norms against each encoder's vocabulary (learned TI vectors can grow to many
times the vocabulary's norms; the thresholds are in titk/embeddings/health.py)."""

from __future__ import annotations

import numpy as np

from ...embeddings.health import LEVELS, health, vocab_median
from . import Sample, ScoreResult, Scorer

__all__ = ["NormScorer", "health"]


class NormScorer(Scorer):
    name = "norms"

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        norms = {k: t.norm(dim=1).tolist() for k, t in ctx.embedding.vectors.items()}
        flat = np.array([n for v in norms.values() for n in v])
        summary = {"norms.mean": float(flat.mean()), "norms.max": float(flat.max())}
        extras: dict = {"vector_norms": norms}
        worst = []
        for enc in getattr(ctx, "encoders", []):
            if enc.key not in norms:
                summary[f"norms.{enc.key}_vs_vocab_median"] = summary[f"norms.{enc.key}_max_vs_vocab_median"] = float("nan")
                continue
            median = vocab_median(enc.table)
            summary[f"norms.{enc.key}_vs_vocab_median"] = float(np.mean(norms[enc.key])) / median
            summary[f"norms.{enc.key}_max_vs_vocab_median"] = max(norms[enc.key]) / median
            worst.append(summary[f"norms.{enc.key}_max_vs_vocab_median"])
        if worst:
            # A metric (MLflow keeps numbers): 0 ok, 1 high, 2 runaway; the word travels in the extras.
            level = health(max(worst))
            summary["norms.health"] = float(LEVELS.index(level))
            extras["health"] = level
        return ScoreResult([{} for _ in samples], summary, extras=extras)
