"""Whether a toy model draws the clothing it is told about in words, by framing: where a TI's wardrobe shift can
show at all.

    python benchmarks/toy_clothing.py toyworld toyworld-sd3 toyworld-flux

For each model: held-out person 0 described in words, "wearing a blue tank top" or "wearing a blue t-shirt", in a
close-up, half-body or full-body photo or with no framing word, 16 seeds each, sampled as the neutral probes are
(10 steps, cfg 5; Flux with Euler and true CFG 5); the toy attribute classifier's reading of the clothing as
counts per label (tank top, t-shirt, hoodie, suit). docs/toyworld.md quotes the SD3 model's figures: before its
second, partial-caption stage a close-up in a tank top came out as t-shirts (0 of 16 tank tops); after it 15 of
16, a full-body shot 8 of 16.
"""

from __future__ import annotations

import sys

FRAMINGS = ("close-up", "half-body", "full-body", None)
SEEDS = list(range(16))


def main(sources: list[str]) -> None:
    from titk.evaluate.evaluator import EvalContext
    from titk.evaluate.scorers.toyworld import ToyAttributeClassifier
    from titk.models import load_model
    from titk.models.sampling import generate
    from titk.toyworld.proofs import toy_sampling
    from titk.toyworld.vision import load_vision
    from titk.toyworld.world import CLOTHING, heldout

    classifier = ToyAttributeClassifier(load_vision())
    who = heldout(0).describe()
    print("counts per label:", ", ".join(CLOTHING))
    for source in sources or ["toyworld-sd3"]:
        bundle = load_model(source, dtype="fp32")
        sampling = toy_sampling(bundle, steps=10)
        for framing in FRAMINGS:
            for clothing in ("tank top", "t-shirt"):
                prompt = f"a {framing + ' ' if framing else ''}photo of {who}, wearing a blue {clothing}"
                images = generate(bundle, [prompt] * len(SEEDS), SEEDS, sampling)
                read = classifier.probabilities(images, EvalContext({}), "samples")["clothing"].argmax(1)
                counts = [int((read == i).sum()) for i in range(len(CLOTHING))]
                print(f"{source}  {framing or 'no framing word'}, asked for a {clothing}: {counts}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
