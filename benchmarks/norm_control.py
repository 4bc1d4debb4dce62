"""Does holding the vectors' norms at the vocabulary's scale (`embedding.norm: vocab`) help? Measured in the
toy world, where identity and clothing are known exactly.

One held-out toy person (never seen in pretraining), 15 images; for each learning rate and training seed a
TI is trained with free norms (A1111) and with held norms, the same seed for both (a paired comparison).
Each TI is then sampled and judged by the toy world's vision model:

- identity: cosine of each sample of "a photo of ohwx" (8 sampling seeds) to the centroid of 15 held-out
  renders of the person (a sample with no face counts 0), averaged;
- prompt following: share of samples of "a photo of ohwx, wearing a <colour> <clothing>" (each clothing,
  2 seeds) in which the vision model sees the clothing asked for (a TI whose vectors drown the prompt
  loses it);
- norm: the largest vector norm over the vocabulary's median norm (titk/embeddings/health.py).

Prints, per learning rate, the mean over training seeds with a 95 % interval (titk.stats) for each mode and
for the paired difference held − free, with its paired t-test p-value. Runs on the CPU, one thread. Usage:

    .venv/bin/python benchmarks/norm_control.py [--lrs 0.02 0.005] [--steps 300] [--seeds 1 2 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

NAME = "ohwx"
EDITS = (("red", "suit"), ("blue", "hoodie"), ("green", "tank top"), ("yellow", "t-shirt"))


def train_one(bundle, data: Path, out: Path, cache: Path, lr: float, steps: int, seed: int, norm: str):
    from titk.config import TrainConfig, parse
    from titk.train.loop import train

    config = parse(TrainConfig, {
        "model": {"source": "toyworld", "dtype": "fp32"},
        "embedding": {"name": NAME, "vectors": 4, "init_text": "person", "norm": norm},
        "data": {"path": str(data), "template": "titk-subject", "width": 64, "height": 64},
        "train": {"semantics": "a1111", "batch_size": 4, "grad_accum": 1, "max_steps": steps, "learning_rate": str(lr), "seed": seed},
        "output": {"dir": str(out), "save_every": 0, "preview": {"every": 0}},
    }, "benchmark")
    return train(config, bundle=bundle, show_progress=False, latent_cache=cache)


def generate(bundle, embedding, prompts: list[str], seeds: list[int]):
    from titk.config import SamplingSettings
    from titk.embeddings.fit import vectors_for
    from titk.models.sampling import embedding_active, generate as sample

    pairs = [(p, s) for p in prompts for s in seeds]
    with embedding_active(bundle, vectors_for(embedding, bundle)):
        sampling = SamplingSettings(steps=20, cfg=5.0, width=64, height=64, batch_size=8)
        return sample(bundle, [p for p, _ in pairs], [s for _, s in pairs], sampling, name=NAME, n_vectors=embedding.n_vectors)


def judge(bundle, embedding, faces, classifier, centroid) -> dict:
    from titk.evaluate.evaluator import EvalContext
    from titk.embeddings.health import vocab_median
    from titk.toyworld.world import CLOTHING

    portraits = generate(bundle, embedding, [f"a photo of {NAME}"], list(range(1, 9)))
    sims = [float(f.embedding @ centroid) if (f := faces.largest(img)[0]) is not None else 0.0 for img in portraits]
    edits = generate(bundle, embedding, [f"a photo of {NAME}, wearing a {c} {w}" for c, w in EDITS], [1, 2])
    seen = classifier.probabilities(edits, EvalContext({}), "samples")["clothing"].argmax(1)
    asked = [CLOTHING.index(w) for _, w in EDITS for _ in (1, 2)]
    enc = bundle.encoders[0]
    ratio = float(embedding.vectors[enc.key].norm(dim=1).max()) / vocab_median(enc.table)
    return {"identity": float(np.mean(sims)), "following": float(np.mean(seen == np.array(asked))), "max_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.02, 0.005])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--person", type=int, default=1, help="index of the held-out toy person")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from titk.config import IdentitySettings
    from titk.evaluate.scorers.toyworld import toy_scorers
    from titk.models import load_model
    from titk.stats import mean_interval, t_p_value
    from titk.toyworld.world import heldout, random_look, render, write_dataset

    bundle = load_model("toyworld", dtype="fp32")
    faces, classifier = toy_scorers(IdentitySettings())
    person = heldout(args.person)
    # Held-out renders (seeds the dataset does not use) are the likeness the samples are measured against.
    refs = [faces.largest(render(person, random_look(random.Random(1000 + i)), 1000 + i))[0].embedding for i in range(15)]
    centroid = np.mean(refs, axis=0)
    centroid /= np.linalg.norm(centroid)

    # The untrained start (the init text's rows) is the floor any training should rise above.
    from titk.embeddings import Embedding
    from titk.embeddings.placeholder import init_vectors

    enc = bundle.encoders[0]
    start = judge(bundle, Embedding(NAME, {enc.key: init_vectors(enc.tokenizer, enc.table, "person", 4, "stretch", True)}), faces, classifier, centroid)
    print(json.dumps({"untrained": start}), flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_dataset(work / "data", person, 15)
        for lr in args.lrs:
            for seed in args.seeds:
                for norm in ("free", "vocab"):
                    started = time.monotonic()
                    result = train_one(bundle, work / "data", work / f"run-{lr}-{seed}-{norm}", work / "cache", lr, args.steps, seed, norm)
                    row = {"lr": lr, "seed": seed, "norm": norm, **judge(bundle, result.embedding, faces, classifier, centroid),
                           "seconds": round(time.monotonic() - started, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    print(f"\nheld-out toy person {person.name}, {args.steps} steps, batch 4, 4 vectors; mean over {len(args.seeds)} training seeds, 95 % CI")
    print(f"untrained (init text 'person'): identity {start['identity']:.3f}, following {start['following']:.3f}")
    print("| lr | measure | free | vocab | vocab − free (paired) | p (paired t) |")
    print("|---|---|---|---|---|---|")
    for lr in args.lrs:
        for measure in ("identity", "following", "max_ratio"):
            by = {n: {r["seed"]: r[measure] for r in rows if r["lr"] == lr and r["norm"] == n} for n in ("free", "vocab")}
            diffs = [by["vocab"][s] - by["free"][s] for s in args.seeds]
            cells = [mean_interval(list(by[n].values())).text() for n in ("free", "vocab")] + [mean_interval(diffs).text()]
            print(f"| {lr:g} | {measure} | " + " | ".join(cells) + f" | {t_p_value(diffs):.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "person": person.name, "untrained": start, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
