"""The toy identity the toy-world benchmarks measure (cross_init_toy.py, study_cost_toy.py): how much
"a photo of ohwx" looks like held-out person 0, as the proofs' face model sees it."""

from __future__ import annotations


def identity_scorer(bundle, person: int = 0, prompt: str = "a photo of ohwx", seeds: tuple[int, ...] = tuple(range(1, 9))):
    """A function giving an embedding's toy identity at each of `seeds`: the toy face model's similarity of
    `prompt` to the centroid of 15 renders of held-out `person` (0 where no face is found)."""
    import random

    import numpy as np

    from titk.config import IdentitySettings
    from titk.evaluate.scorers.toyworld import ToyFaceEmbedder
    from titk.toyworld.proofs import generate
    from titk.toyworld.vision import load_vision
    from titk.toyworld.world import heldout, random_look, render

    faces = ToyFaceEmbedder(load_vision(), IdentitySettings().det_thresh)
    who = heldout(person)
    centroid = np.mean([faces.largest(render(who, random_look(random.Random(i)), i))[0].embedding for i in range(15)], axis=0)
    centroid /= np.linalg.norm(centroid)

    def on_images(images) -> np.ndarray:
        return np.array([float(f.embedding @ centroid) if (f := faces.largest(img)[0]) is not None else 0.0 for img in images])

    def identity(embedding) -> np.ndarray:
        return on_images(generate(bundle, embedding, [prompt], list(seeds)))

    identity.seeds, identity.on_images = seeds, on_images  # on_images: the same measure of images drawn elsewhere
    return identity
