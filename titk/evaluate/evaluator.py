"""The Evaluator: generate a prompt suite with an embedding on an already loaded model, then score it.

Scorers and their models (insightface, CLIP) are built once, and the references (the person's photos) are
prepared once, so a worker evaluates many checkpoints without reloading anything.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..config import EvalSettings
from ..data.images import BadImage, is_image_path, open_image
from ..embeddings import Embedding
from ..embeddings.fit import vectors_for
from ..errors import TitkError
from .grid import image_grid
from .sampler import embedding_active, generate
from .scorecard import Scorecard
from .scorers import References, Sample, Scorer
from .suite import Suite, find_in_experiments, load_suite

LIBRARIES = ("torch", "diffusers", "transformers", "open-clip-torch", "insightface", "onnxruntime", "titk")


class EvalContext:
    """What scorers share within one evaluation: CLIP features (references cached across evaluations)."""

    def __init__(self, reference_cache: dict):
        self._refs = reference_cache
        self._samples: dict = {}
        self.extras: dict = {}
        self.arrays: dict = {}
        self.embedding: Embedding | None = None
        self.vectors: dict = {}
        self.encoders: list = []

    def features(self, clip, key: str, images) -> np.ndarray:
        cache = self._refs if key == "references" else self._samples
        if (clip.key, key) not in cache:
            cache[(clip.key, key)] = clip.image_features(images)
        return cache[(clip.key, key)]


def load_references(folder: str | Path, limit: int = 64) -> References:
    """The person's photos from a folder (flat, image files in name order, at most `limit`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TitkError(f"{folder}: reference folder not found")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))[:limit]
    if not paths:
        raise TitkError(f"{folder}: no reference images in it")
    images = []
    for path in paths:
        try:
            images.append(open_image(path).rgb)
        except BadImage:
            continue
    if not images:
        raise TitkError(f"{folder}: none of its images can be read")
    return References(images, paths)


class Evaluator:
    def __init__(self, bundle, settings: EvalSettings, references: References, *, face_embedder=None, classifier=None):
        self.bundle, self.settings = bundle, settings
        self.suite = load_suite(settings.suite)
        self.references = references
        self._reference_cache: dict = {}
        self.scorers: list[Scorer] = self._build(face_embedder, classifier)
        ctx = EvalContext(self._reference_cache)
        for scorer in self.scorers:
            scorer.prepare(references, ctx)

    def _build(self, face_embedder, classifier) -> list[Scorer]:
        from .scorers.clip import ClipModel, ClipScorer
        from .scorers.diversity import DiversityScorer
        from .scorers.identity import IdentityScorer, InsightFaceEmbedder
        from .scorers.norms import NormScorer
        from .scorers.personality import ClipZeroShot, PersonalityScorer, load_label_sets

        s = self.settings
        wanted = set(s.scorers)
        needs_clip = bool(wanted & {"clip", "diversity"}) or ("personality" in wanted and classifier is None)
        clip = ClipModel(s.clip.model, s.clip.pretrained, self.bundle.device, s.clip.batch_size) if needs_clip else None
        scorers: list[Scorer] = []
        for name in s.scorers:
            if name == "identity":
                embedder = face_embedder or InsightFaceEmbedder(s.identity.pack, s.identity.root, s.identity.det_size, s.identity.det_thresh)
                scorers.append(IdentityScorer(embedder))
            elif name == "clip":
                scorers.append(ClipScorer(clip))
                if s.clip.second_model:
                    second = ClipModel(s.clip.second_model, s.clip.second_pretrained, self.bundle.device, s.clip.batch_size)
                    scorers.append(ClipScorer(second, suffix="_2"))
            elif name == "diversity":
                scorers.append(DiversityScorer(clip))
            elif name == "personality":
                chosen = classifier or ClipZeroShot(clip, load_label_sets(find_in_experiments(s.labels, "prompts")))
                scorers.append(PersonalityScorer(chosen))
            elif name == "norms":
                scorers.append(NormScorer())
        return scorers

    def samples(self, embedding: Embedding, name: str | None = None, suite: Suite | None = None, on_progress=None) -> list[Sample]:
        """Generate the suite's (prompt, seed) images with `embedding` set on the loaded model."""
        suite = suite or self.suite
        spec, name = suite.spec, name or embedding.name
        vectors = vectors_for(embedding, self.bundle)
        prompts = [text.replace("[name]", name) for _, text, _, _ in suite.items]
        seeds = [seed for *_, seed in suite.items]
        images: list[Image.Image] = []
        step = self.settings.batch_size
        with embedding_active(self.bundle, vectors):
            for start in range(0, len(prompts), step):
                images += generate(
                    self.bundle, prompts[start : start + step], seeds[start : start + step], name=name,
                    n_vectors=embedding.n_vectors, negative_prompt=spec.negative_prompt, steps=spec.steps, cfg=spec.cfg,
                    width=spec.width, height=spec.height, sampler=spec.sampler, batch_size=step,
                )
                if on_progress:
                    on_progress(len(images), len(prompts))
        return [
            Sample(image, prompt, text.replace("[name]", ""), seed, kind, index)
            for image, prompt, (index, text, kind, seed) in zip(images, prompts, suite.items)
        ]

    def evaluate(self, embedding: Embedding, *, name: str | None = None, suite: Suite | None = None, on_progress=None) -> Scorecard:
        suite = suite or self.suite
        return self.score(self.samples(embedding, name, suite, on_progress), embedding, suite, name)

    def score(self, samples: list[Sample], embedding: Embedding, suite: Suite | None = None, name: str | None = None) -> Scorecard:
        """Run every scorer on generated samples (of `suite`, the evaluator's own by default)."""
        suite = suite or self.suite
        ctx = EvalContext(self._reference_cache)
        ctx.embedding, ctx.encoders = embedding, self.bundle.encoders
        ctx.vectors = vectors_for(embedding, self.bundle)
        rows = [
            {"prompt_index": s.prompt_index, "kind": s.kind, "prompt": s.prompt, "clean_prompt": s.clean_prompt, "seed": s.seed}
            for s in samples
        ]
        summary: dict[str, float] = {}
        for scorer in self.scorers:
            scorer_rows, scorer_summary = scorer.score(samples, ctx)
            for row, extra in zip(rows, scorer_rows):
                row.update(extra)
            summary.update(scorer_summary)
        card = Scorecard(pd.DataFrame(rows), summary, self.protocol(suite, embedding), ctx.extras, ctx.arrays, [s.image for s in samples])
        card.grid = self.grid(samples, suite, name or embedding.name, summary)
        return card

    def grid(self, samples: list[Sample], suite: Suite, name: str, summary: dict) -> Image.Image:
        """Prompts down, seeds across, with the headline scores in the title."""
        seeds = suite.seeds
        by_key = {(s.prompt_index, s.seed): s.image for s in samples}
        n_prompts = len(suite.spec.prompts)
        size = samples[0].image.size if samples else (64, 64)
        blank = Image.new("RGB", size, (235, 235, 235))
        cells = [by_key.get((p, seed), blank) for p in range(n_prompts) for seed in seeds]
        labels = [f"[{p.kind[:3]}] {p.text.replace('[name]', name)}" for p in suite.spec.prompts]
        head = [f"{key.split('.')[-1] if '.' in key else key} {summary[key]:.3f}" for key in
                ("identity.similarity", "identity.detection_rate", "clip_t", "clip_i", "diversity.vendi") if key in summary]
        return image_grid(cells, n_prompts, len(seeds), row_labels=labels, col_labels=[f"seed {s}" for s in seeds],
                          title=f"{name}   " + "   ".join(head))

    def protocol(self, suite: Suite, embedding: Embedding) -> dict:
        spec = suite.spec
        protocol = {
            "suite": suite.name, "suite_sha256": suite.sha256, "seeds": suite.seeds, "sampler": spec.sampler,
            "steps": spec.steps, "cfg": spec.cfg, "negative_prompt": spec.negative_prompt,
            "size": [spec.width or self.bundle.default_size, spec.height or self.bundle.default_size],
            "model": {"name": self.bundle.name, "short_hash": self.bundle.short_hash, "family": self.bundle.family.value,
                      "dtype": str(self.bundle.dtype).removeprefix("torch.")},
            "embedding": {"name": embedding.name, "vectors": embedding.n_vectors, "step": embedding.step},
            "references": len(self.references.images),
            "versions": {lib: _version(lib) for lib in LIBRARIES},
        }
        for scorer in self.scorers:
            protocol.update({scorer.name: scorer.protocol()} if scorer.name == "identity" else scorer.protocol())
        return protocol


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"
