"""Diversity of one prompt's images across seeds: Vendi score and mean pairwise CLIP distance."""

from __future__ import annotations

import numpy as np

from ..metrics import mean_pairwise_distance, vendi_score
from . import Sample, ScoreResult, Scorer


class DiversityScorer(Scorer):
    name = "diversity"

    def __init__(self, clip):
        self.clip = clip

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        feats = ctx.features(self.clip, "samples", [s.image for s in samples])
        by_prompt: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            by_prompt.setdefault(s.prompt_index, []).append(i)
        vendi = {p: vendi_score(feats[idx]) for p, idx in by_prompt.items()}
        dist = {p: mean_pairwise_distance(feats[idx]) for p, idx in by_prompt.items()}
        rows = [{"vendi_prompt": vendi[s.prompt_index], "pairwise_distance_prompt": dist[s.prompt_index]} for s in samples]
        finite = [v for v in dist.values() if not np.isnan(v)]
        summary = {
            "diversity.vendi": float(np.mean(list(vendi.values()))) if vendi else float("nan"),
            "diversity.pairwise_distance": float(np.mean(finite)) if finite else float("nan"),
            "diversity.images_per_prompt": float(np.mean([len(v) for v in by_prompt.values()])) if by_prompt else 0.0,
        }
        return ScoreResult(rows, summary)

    def protocol(self) -> dict:
        return {"diversity": f"per prompt over its seeds, CLIP {self.clip.key} image embeddings; Vendi and mean 1 − cos"}
