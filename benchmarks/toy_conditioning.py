"""Whether a toy model draws a held-out person it is told about in words: the ceiling of what a TI can find.

    python benchmarks/toy_conditioning.py toyworld-sd3 toyworld-flux

For each model and held-out person 0 and 1: the toy identity similarity (the proofs' measure, 8 seeds) of
"a photo of a person" and of "a photo of <their description>"; for SD3 also the description given to the two
CLIP encoders only, T5 reading "a photo of a person" (where a CLIP TI acts). Images are the proofs' (cfg 5;
Flux with true CFG 5, as its toy model is not guidance-distilled). docs/benchmarks.md has its figures for the
shipped models and the earlier ones (person 0: SD3 0.25 and 0.56, 0.63 through CLIP only; Flux 0.35 and 0.44).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GENERIC = "a photo of a person"


def clip_only(bundle, person: int, description: str) -> float:
    """SD3: the description to CLIP-L and CLIP-G, the generic prompt to T5, through diffusers' own pipeline."""
    import numpy as np
    import torch

    from toy_identity import identity_scorer

    score = identity_scorer(bundle, person)
    images = [
        bundle.pipeline(prompt=description, prompt_2=description, prompt_3=GENERIC, height=64, width=64, num_inference_steps=20,
                        guidance_scale=5.0, generator=torch.Generator().manual_seed(seed)).images[0]
        for seed in score.seeds
    ]
    return float(np.mean(score.on_images(images)))


def main(sources: list[str]) -> None:
    from titk.models import load_model
    from titk.toyworld.proofs import untrained
    from titk.toyworld.world import heldout
    from toy_identity import identity_scorer

    for source in sources or ["toyworld-sd3"]:
        bundle = load_model(source, dtype="fp32")
        start = untrained(bundle)  # no "ohwx" in these prompts: the embedding is not read
        for person in (0, 1):
            description = f"a photo of {heldout(person).describe()}"
            row = {name: float(identity_scorer(bundle, person, prompt)(start).mean()) for name, prompt in
                   (("generic", GENERIC), ("described", description))}
            if bundle.family.value == "sd3":
                row["described to CLIP only"] = clip_only(bundle, person, description)
            print(source, f"person {person}:", ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
