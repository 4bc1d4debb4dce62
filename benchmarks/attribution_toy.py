"""Does image attribution find planted bad images, and after how many trials? Measured in the toy world.

The dataset: 15 close-up images of held-out person 0 in which 003, 008 and 013 are close-ups of held-out
person 5 (who differs in all five identity attributes), captioned like the others. Identity is measured
against 8 other photos of person 0 (`references:`), on "a close-up photo of ohwx" at 8 seeds, 10 steps.
A real `run_sweep` trains each trial on a random pair of images (`subset: {size: 2}`, batch 2, 100 steps,
learning rate 0.03; pairs drawn again are trained again). After the sweep, `image_attribution` is computed
on the first n trials for every n from 17 (the fewest that give intervals) to the end, and the script prints
the first n from which the planted images rank lowest with intervals below zero at every later count.

Why pairs: the toy TI learns the majority identity of its images, so an image is found in proportion to
its share of a trial's images (docs/metrics.md, "Which images help"); single images are no better, since a
TI of one image varies with that image far more than with the person in it.

About 12.5 s a trial on one CPU thread (64 trials: about 15 minutes), too long for the test suite; the
estimator itself is tested on synthetic studies (tests/test_attribution.py). Usage:

    .venv/bin/python benchmarks/attribution_toy.py [--trials 64] [--seeds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

BAD = ["003.png", "008.png", "013.png"]
IMAGES = [f"{i:03d}.png" for i in range(15)]


def make_study(root: Path, trials: int, seeds: int) -> Path:
    from titk.toyworld.world import heldout, write_dataset

    close_up = {"framing": {"close-up": 1.0}}
    write_dataset(root / "person", heldout(0), 15, seed=0, weights=close_up)
    write_dataset(root / "other", heldout(5), len(BAD), seed=0, weights=close_up)
    write_dataset(root / "references", heldout(0), 8, seed=1)
    data = root / "data"
    shutil.copytree(root / "person", data)
    for k, name in enumerate(BAD):
        for ext in ("png", "txt"):
            shutil.copy(root / "other" / f"{k:03d}.{ext}", data / name.replace(".png", f".{ext}"))
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"sampler": "dpm++2m", "steps": 10, "cfg": 5.0, "seeds": list(range(1, seeds + 1)),
                                     "prompts": [{"kind": "identity", "text": "a close-up photo of [name]"}]}))
    config = root / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "study": "planted",
        "base": {"model": {"source": "toyworld", "dtype": "fp32"}, "embedding": {"name": "ohwx", "vectors": 4, "init_text": "person"},
                 "data": {"path": str(data), "template": "titk-subject", "width": 64, "height": 64},
                 "train": {"semantics": "a1111", "batch_size": 2, "max_steps": 100, "learning_rate": "0.03"},
                 "output": {"save_every": 0}},
        "space": {}, "subset": {"size": 2}, "sampler": "random", "repeats": 1, "n_trials": trials,
        "retrain_duplicates": True,
        "references": str(root / "references"), "confirm": {"top": 0},
        "objective": {"metrics": {"identity.similarity": 1.0}, "floors": {}, "pruner": "none", "eval_every": 0},
        "evaluation": {"world": "toyworld", "suite": str(suite), "scorers": ["identity"]},
    }))
    return config


def found(table) -> bool:
    """The planted images are the lowest three, each with an interval below zero."""
    by_image = table.set_index("image")
    return set(table["image"][:3]) == set(BAD) and bool((by_image.reindex(BAD)["ci_high"] < 0).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=8, help="sampling seeds per trial's evaluation")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from titk.analysis.effects import image_attribution
    from titk.config import load_sweep_config
    from titk.sweep.runner import run_sweep
    from titk.sweep.trials import measured

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_sweep_config(make_study(Path(tmp), args.trials, args.seeds))
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
        args.json.write_text(json.dumps({"first": first, "rows": rows, "minutes": minutes}, indent=2))


if __name__ == "__main__":
    main()
