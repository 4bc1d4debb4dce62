"""Does image attribution find planted bad images, and after how many trials? Measured in the toy world.

The study is `titk.toyworld.planted`: 15 close-ups of held-out person 0 in which 003, 008 and 013 show
held-out person 5, captioned like the others; identity against 8 other photos of person 0, on "a close-up
photo of ohwx" at 8 seeds, 10 steps. A real `run_sweep` trains each trial on a pair of images
(`subset: {size: 2}`, drawn in balanced passes over the dataset), batch 2, 50 steps, learning rate 0.06.
After the sweep, `image_attribution` is computed on the first n trials for every n from 17 (the fewest that
give intervals) to the end, and the script prints the first n from which the planted images rank lowest
with intervals below zero at every later count.

Why pairs: the toy TI learns the majority identity of its images, so an image is found in proportion to
its share of a trial's images (docs/metrics.md, "Which images help"); single images are no better, since a
TI of one image varies with that image far more than with the person in it.

Trials are trained `--pack` at a time (4, as the test suite runs the same study for 30 trials in
tests/test_attribution.py; `--pack 1` one at a time, with the same values): the minutes printed at the end
compare the two. Usage:

    .venv/bin/python benchmarks/attribution_toy.py [--trials 48] [--seeds 8] [--steps 50] [--lr 0.06] [--pack 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=8, help="sampling seeds per trial's evaluation")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", default="0.06")
    parser.add_argument("--pack", type=int, default=4, help="trials trained at once (packed trials)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from titk.analysis.effects import image_attribution
    from titk.config import load_sweep_config
    from titk.sweep.runner import run_sweep
    from titk.sweep.trials import measured
    from titk.toyworld.planted import BAD, IMAGES, found, write_planted_study

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_sweep_config(write_planted_study(Path(tmp), args.trials, seeds=args.seeds, steps=args.steps, learning_rate=args.lr,
                                                                 pack=args.pack))
        result = run_sweep(config, workdir=Path(tmp) / "work", show_progress=False)
    done = measured(result.table).sort_values("trial")
    rows = []
    for n in range(17, len(done) + 1):
        table = image_attribution(done.head(n), "value", IMAGES)
        if table.attrs.get("method") != "ols, fixed size":
            continue
        by_image = table.set_index("image")
        rows.append({"trials": n, "found": found(table), "lowest": list(table["image"][:3]),
                     "bad_ci_high": [round(float(v), 4) for v in by_image.reindex(BAD)["ci_high"]]})
        print(f"{n:3d} trials: lowest {rows[-1]['lowest']}, planted ci_high {rows[-1]['bad_ci_high']}, found {rows[-1]['found']}")
    first = next((r["trials"] for i, r in enumerate(rows) if all(later["found"] for later in rows[i:])), None)
    minutes = (time.time() - start) / 60
    print(f"found from {first} trials on (of {len(done)}), {minutes:.1f} min" if first else f"not found within {len(done)} trials, {minutes:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"first": first, "rows": rows, "minutes": minutes,
                                          "trials": [{"subset": list(s), "value": float(v)} for s, v in zip(done["subset"], done["value"])]}, indent=2))


if __name__ == "__main__":
    main()
