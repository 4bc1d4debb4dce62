"""How many probe images does a personality histogram need? A bootstrap in the toy world.

A TI of held-out person 0 is trained on 15 images (12 in tank tops, 12 outdoors; 400 steps, batch 4, lr
0.02), and the neutral probes of `toy-personality` ("[name]", "a photo of [name]") are generated at many
seeds (`--pool` images in all). For each count n, n images are drawn from that pool with replacement, again
and again, and each label's share among them is taken: the spread of those shares (2.5th to 97.5th
percentile) is how well n images pin a share down. The script prints, per n, the worst half-width over every
label of every attribute and Wilson's interval at the same share for comparison, and the smallest n whose
worst half-width is at most `--target` (the count the shipped probe suites use; docs/metrics.md).

About 3 minutes on one CPU thread. Usage:

    .venv/bin/python benchmarks/personality_seeds.py [--pool 192] [--target 0.15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COUNTS = (8, 16, 24, 32, 48, 64, 96)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=192, help="probe images generated (half per prompt)")
    parser.add_argument("--target", type=float, default=0.15, help="largest acceptable half-width of a share's interval")
    parser.add_argument("--resamples", type=int, default=4000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from titk.config import EvalSettings, parse
    from titk.evaluate.evaluator import EvalContext
    from titk.evaluate.scorers.toyworld import toy_scorers
    from titk.models import load_model
    from titk.stats import share_interval
    from titk.toyworld.proofs import generate, train_ti, write_skewed

    start = time.time()
    bundle = load_model("toyworld", dtype="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_skewed(Path(tmp) / "data", {"clothing": "tank top", "background": "outdoors"}, 0.8)
        embedding = train_ti(bundle, data, Path(tmp) / "run")
    seeds = list(range(1, args.pool // 2 + 1))
    images = generate(bundle, embedding, ["ohwx", "a photo of ohwx"], seeds)
    _, classifier = toy_scorers(parse(EvalSettings, {"world": "toyworld"}, "benchmark").identity)
    labels = {name: p.argmax(1) for name, p in classifier.probabilities(images, EvalContext({}), "samples").items()}

    rng = np.random.default_rng(0)
    rows = []
    for n in COUNTS:
        draws = rng.integers(0, len(images), size=(args.resamples, n))
        worst, worst_wilson, where = 0.0, 0.0, ""
        for name, got in labels.items():
            for label in range(len(classifier.label_sets[name])):
                shares = (got[draws] == label).mean(1)
                low, high = np.percentile(shares, [2.5, 97.5])
                share = float((got == label).mean())
                w_low, w_high = share_interval(round(share * n), n)
                if (high - low) / 2 > worst:
                    worst, where = (high - low) / 2, f"{name}={classifier.label_sets[name][label]} ({share:.0%})"
                worst_wilson = max(worst_wilson, (w_high - w_low) / 2)
        rows.append({"n": n, "worst_half_width": round(float(worst), 3), "at": where, "wilson_worst_half_width": round(worst_wilson, 3)})
        print(f"n={n:3d}: bootstrap ±{worst:.3f} at worst ({where}); Wilson ±{worst_wilson:.3f}")
    enough = next((r["n"] for r in rows if r["worst_half_width"] <= args.target), None)
    shares = {name: {classifier.label_sets[name][i]: round(float((got == i).mean()), 3) for i in range(len(classifier.label_sets[name]))}
              for name, got in labels.items()}
    print(f"smallest n with ±{args.target:.2f} at worst: {enough}  ({time.time() - start:.0f} s)")
    print("shares in the pool:", json.dumps(shares))
    if args.json:
        args.json.write_text(json.dumps({"pool": len(images), "target": args.target, "rows": rows, "enough": enough, "shares": shares}, indent=2))


if __name__ == "__main__":
    main()
