"""The pieces the toy world's proofs share (tests and benchmarks): datasets of one held-out person with a
controlled skew, a TI trained on one, its untrained start, and samples of either.

The proofs' TI: 4 vectors from "person", 400 steps of batch 4 at learning rate 0.02 (A1111 semantics), 64 px.
"""

from __future__ import annotations

from pathlib import Path

from .world import heldout, skew, write_dataset


def write_skewed(folder: Path, labels: dict[str, str], share: float, *, n: int = 15, person: int = 0, seed: int = 5) -> Path:
    """`n` images of held-out `person` in which `share` of them carry each of `labels` ({attribute: label},
    dealt exactly: 0.8 of 15 is 12); the other attributes are drawn uniformly."""
    weights = {}
    for attribute, label in labels.items():
        weights |= skew(attribute, label, share)
    write_dataset(folder, heldout(person), n, seed=seed, weights=weights or None)
    return folder


def toy_source(bundle) -> str:
    """The `model.source` name of the toy model `bundle` is (toyworld, toyworld-sdxl, toyworld-sd3, toyworld-flux)."""
    from ..paths import TOY_SOURCES

    return next(name for name, family in TOY_SOURCES.items() if family == bundle.family.value)


def proof_config(data: Path, out: Path, embedding: dict | None = None, source: str = "toyworld", **train):
    """The proofs' training config for the images in `data` on the toy model `source` (settings above;
    `embedding` and `train` override them)."""
    from ..config import TrainConfig, parse

    settings = {"semantics": "a1111", "batch_size": 4, "grad_accum": 1, "max_steps": 400, "learning_rate": "0.02", **train}
    return parse(TrainConfig, {
        "model": {"source": source, "dtype": "fp32"},
        "embedding": {"name": "ohwx", "vectors": 4, "init_text": "person", **(embedding or {})},
        "data": {"path": str(data), "template": "titk-subject", "width": 64, "height": 64},
        "train": settings,
        "output": {"dir": str(out), "save_every": 0, "preview": {"every": 0}},
    }, "proof")


def train_ti(bundle, data: Path, out: Path, cache: Path | None = None, embedding: dict | None = None, **train):
    """The proofs' TI of the images in `data`."""
    from ..train.loop import train as run

    config = proof_config(data, out, embedding, source=toy_source(bundle), **train)
    return run(config, bundle=bundle, show_progress=False, latent_cache=cache).embedding


def train_tis(bundle, runs: dict[str, tuple[Path, Path]], cache: Path | None = None, embedding: dict | None = None, **train) -> dict:
    """The proofs' TIs of several datasets ({name: (data, out)}) trained side by side on the one model (packed:
    each as it would be alone, within rounding; what packing saves on a CPU: benchmarks/attribution_toy.py): {name: embedding}."""
    from ..train.loop import Job, train_together

    jobs = [Job(proof_config(data, out, embedding, source=toy_source(bundle), **train), latent_cache=cache) for data, out in runs.values()]
    results = train_together(jobs, bundle=bundle, show_progress=False)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return {name: result.embedding for name, result in zip(runs, results)}


def untrained(bundle):
    """What the proofs' TI starts from, as the training loop sets it: "person" over 4 vectors."""
    from ..train.loop import starting_embedding

    return starting_embedding(proof_config(Path("."), Path("."), source=toy_source(bundle)), bundle)


def toy_sampling(bundle, steps: int = 20, batch_size: int = 8):
    """How the toy models are sampled: DPM++ 2M at cfg 5, 64 px; Flux with Euler (all its pipeline runs) and
    true CFG 5, as its toy model is not guidance-distilled."""
    from ..config import SamplingSettings

    sampling = SamplingSettings(steps=steps, cfg=5.0, width=64, height=64, batch_size=batch_size)
    sampling.sampler = bundle.family.spec.usable_sampler(sampling.sampler)
    sampling.true_cfg = None if bundle.adapter.runs_negative else sampling.cfg
    return sampling


def generate(bundle, embedding, prompts: list[str], seeds: list[int], steps: int = 20):
    """Each prompt (with "ohwx") at each seed, sampled as `toy_sampling` says."""
    from ..embeddings.fit import vectors_for
    from ..models.sampling import embedding_active, generate as sample

    pairs = [(p, s) for p in prompts for s in seeds]
    with embedding_active(bundle, vectors_for(embedding, bundle)):
        sampling = toy_sampling(bundle, steps)
        return sample(bundle, [p for p, _ in pairs], [s for _, s in pairs], sampling, name="ohwx", n_vectors=embedding.n_vectors)
