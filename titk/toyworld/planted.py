"""A study with known bad images, for proving that attribution finds them (tests and benchmarks).

The dataset: 15 close-ups of held-out person 0 in which 003, 008 and 013 are close-ups of held-out person 5
(who differs in all five identity attributes), captioned like the others, as a scraped dataset's wrong
photos would be. Identity is measured against 8 other photos of person 0 (`references:`), on "a close-up
photo of ohwx" at `seeds` sampling seeds. Trials train on pairs of images (`subset: {size: 2}`, drawn in
balanced passes; pairs drawn again are trained again), because the toy TI learns the majority identity of
its images: an intruder is found in proportion to its share of a trial's images (docs/metrics.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .world import heldout, write_dataset

BAD = ["003.png", "008.png", "013.png"]
IMAGES = [f"{i:03d}.png" for i in range(15)]


def write_planted_study(root: Path, trials: int, *, seeds: int = 8, steps: int = 50, learning_rate: str = "0.06",
                        pack: int = 4) -> Path:
    """Writes the dataset, references, suite and sweep config under `root`; returns the config's path. Trials
    are trained `pack` at a time (each as it would be alone; on a CPU 3.6 min for 30 trials against 4.3 one by one,
    benchmarks/attribution_toy.py)."""
    close_up = {"framing": {"close-up": 1.0}}
    write_dataset(root / "person", heldout(0), len(IMAGES), seed=0, weights=close_up)
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
                 "train": {"semantics": "a1111", "batch_size": 2, "max_steps": steps, "learning_rate": learning_rate},
                 "output": {"save_every": 0}},
        "space": {}, "subset": {"size": 2}, "sampler": "random", "repeats": 1, "n_trials": trials,
        "retrain_duplicates": True, "pack": pack,
        "references": str(root / "references"), "confirm": {"top": 0},
        "objective": {"metrics": {"identity.similarity": 1.0}, "floors": {}, "pruner": "none", "eval_every": 0},
        "evaluation": {"world": "toyworld", "suite": str(suite), "scorers": ["identity"]},
    }))
    return config


def found(table) -> bool:
    """Whether an `image_attribution` table ranks the planted images lowest, each with an interval below zero."""
    by_image = table.set_index("image")
    return set(table["image"][: len(BAD)]) == set(BAD) and bool((by_image.reindex(BAD)["ci_high"] < 0).all())
