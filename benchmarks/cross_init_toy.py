"""Does cross-initialisation learn a face in fewer steps? Measured in the toy world.

The proofs' TI (titk/toyworld/proofs.py: held-out person 0, 15 images drawn uniformly, 4 vectors from
"person", batch 4, A1111 semantics) trained for each length and learning rate, from the init text's token
rows (`embedding.cross_init: false`) and from the text encoder's output for it (`true`); identity is the toy
face model's similarity of "a photo of ohwx" at 8 seeds to the person's centroid, paired by seed against the
untrained token-row start. One training seed per setting: a measurement, not a proof. About 1 minute per
16 settings-steps on two threads. Usage:

    .venv/bin/python benchmarks/cross_init_toy.py [--steps 20 50] [--lr 0.02 0.2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--lr", nargs="+", default=["0.02", "0.2"])
    args = parser.parse_args()

    from scipy import stats

    from titk.models import load_model
    from titk.toyworld.proofs import proof_config, untrained, write_skewed
    from toy_identity import identity_scorer
    from titk.train.loop import train

    bundle = load_model("toyworld", dtype="fp32")
    identity = identity_scorer(bundle)

    before = identity(untrained(bundle))
    print(f"untrained (token rows): identity {before.mean():.3f}")
    print("| steps | learning rate | start | identity | gain over untrained | seeds improved | p (paired, one-sided) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_skewed(tmp / "data", {}, 0.0)
        for steps in args.steps:
            for cross in (False, True):
                for lr in args.lr:
                    config = proof_config(data, tmp / f"run-{steps}-{cross}-{lr}", {"cross_init": cross}, max_steps=steps, learning_rate=lr)
                    after = identity(train(config, bundle=bundle, show_progress=False, latent_cache=tmp / "cache").embedding)
                    gain = after - before
                    p = stats.ttest_rel(after, before, alternative="greater").pvalue
                    start = "encoder output" if cross else "token rows"
                    print(f"| {steps} | {lr} | {start} | {after.mean():.3f} | {gain.mean():+.3f} | {(gain > 0).sum()} of 8 | {p:.2g} |", flush=True)


if __name__ == "__main__":
    main()
