"""The Evaluator: generate a prompt suite with an embedding on an already loaded model, then score it.

`build_evaluator` is the one way to make one (`titk eval` and sweeps alike): scorers and their models
(insightface or the toy world's, CLIP) are built once, and the references (the person's photos) are
prepared once, so a worker evaluates many checkpoints without reloading anything. References are best held
out (not trained on) and given with the training images (`held_out_references`, a sweep's split): identity
then measures likeness to new photos of the person, and the copy index closeness to the training ones.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..config import EvalSettings
from ..data.images import BadImage, is_image_path, open_image
from ..drawing import image_grid
from ..embeddings import Embedding
from ..embeddings.fit import vectors_for
from ..errors import TitkError
from ..models.sampling import check_sampling, check_true_cfg, embedding_active, generate
from .registry import HEADLINES
from .scorecard import Scorecard
from .scorers import References, Sample, Scorer
from .suite import Suite, find_prompt_file, load_suite

LIBRARIES = ("torch", "diffusers", "transformers", "open-clip-torch", "insightface", "onnxruntime", "titk")


class EvalContext:
    """What scorers share within one evaluation: CLIP features (references cached across evaluations)."""

    def __init__(self, reference_cache: dict):
        self._refs = reference_cache
        self._samples: dict = {}
        self.embedding: Embedding | None = None
        self.vectors: dict = {}
        self.encoders: list = []
        self.untrained: dict | None = None  # personality histograms of the untrained start, per label set
        self.trained_on: list[str] | None = None  # the file names of the images trained on (a sweep trial's subset)

    def features(self, clip, key: str, images) -> np.ndarray:
        cache = self._refs if key == "references" else self._samples
        if (clip.key, key) not in cache:
            cache[(clip.key, key)] = clip.image_features(images)
        return cache[(clip.key, key)]


def image_files(folder: str | Path, what: str = "reference") -> list[Path]:
    """A folder's image files (flat, in name order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TitkError(f"{folder}: {what} folder not found")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if not paths:
        raise TitkError(f"{folder}: no {what} images in it")
    return paths


def read_images(paths: list[Path], where: str) -> tuple[list[Image.Image], list[Path]]:
    """The images that can be read, and their paths."""
    images, read = [], []
    for path in paths:
        try:
            images.append(open_image(path).rgb)
            read.append(path)
        except BadImage:
            continue
    if not images:
        raise TitkError(f"{where}: none of its images can be read")
    return images, read


def load_references(folder: str | Path, limit: int) -> References:
    """The person's photos from a folder (flat, image files in name order, at most `limit`)."""
    images, paths = read_images(image_files(folder)[:limit], str(folder))
    return References(images, paths, source=f"the photos in {folder}")


def held_out_references(references: str | Path, training: str | Path, limit: int) -> References:
    """`references` compared with the images trained on (`training`): references that are training images
    (the same file content) are not held out and are left out of them; when none is left, the training
    images are the references (then there is no copy index)."""
    from ..hashing import sha256_bytes

    trained = image_files(training, "training images")[:limit]
    given = image_files(references)[:limit]
    hashes = {sha256_bytes(p.read_bytes()) for p in trained}
    fresh = [p for p in given if sha256_bytes(p.read_bytes()) not in hashes]
    if not fresh:
        images, paths = read_images(trained, str(training))
        return References(images, paths, source=f"the training images in {training} (the references are the same photos: not held out)")
    images, paths = read_images(fresh, str(references))
    training_images, training_paths = read_images(trained, str(training))
    left = f"; {len(given) - len(fresh)} of them are training images, left out" if len(fresh) < len(given) else ""
    return References(images, paths, training_images, training_paths, f"held-out photos in {references} (not in {training}{left})")


def build_evaluator(bundle, settings: EvalSettings, references: References) -> Evaluator:
    """The evaluator `settings` describe: the real world's scorers (insightface, CLIP) or the toy world's."""
    from .scorers.clip import ClipModel, ClipScorer
    from .scorers.diversity import DiversityScorer
    from .scorers.identity import IdentityScorer, InsightFaceEmbedder
    from .scorers.norms import NormScorer
    from .scorers.personality import ClipZeroShot, PersonalityScorer, load_label_sets

    face_embedder = classifier = None
    if settings.world == "toyworld":
        from .scorers.toyworld import toy_scorers

        face_embedder, classifier = toy_scorers(settings.identity)
    wanted = set(settings.scorers)
    needs_clip = bool(wanted & {"clip", "diversity"}) or ("personality" in wanted and classifier is None)
    c = settings.clip

    def clip_model(name, pretrained):
        return ClipModel(name, pretrained, bundle.device, c.batch_size)

    clip = clip_model(c.model, c.pretrained) if needs_clip else None
    scorers: list[Scorer] = []
    for name in settings.scorers:
        if name == "identity":
            scorers.append(IdentityScorer(face_embedder or InsightFaceEmbedder(settings.identity)))
        elif name == "clip":
            scorers.append(ClipScorer(clip))
            if c.second_model:
                scorers.append(ClipScorer(clip_model(c.second_model, c.second_pretrained), suffix="_2"))
        elif name == "diversity":
            scorers.append(DiversityScorer(clip))
        elif name == "personality":
            scorers.append(PersonalityScorer(classifier or ClipZeroShot(clip, load_label_sets(find_prompt_file(settings.labels)))))
        elif name == "norms":
            scorers.append(NormScorer())
    return Evaluator(bundle, settings, references, scorers)


class Evaluator:
    def __init__(self, bundle, settings: EvalSettings, references: References, scorers: list[Scorer]):
        self.bundle, self.settings = bundle, settings
        self.suite = load_suite(settings.suite)
        # Personality on its own neutral probes when given: the identity suite's prompts name framing and
        # clothing, and its few seeds leave a histogram's interval wide.
        self.probe_suite = load_suite(settings.personality_suite) if settings.personality_suite else None
        check_true_cfg(bundle, settings.true_cfg, "evaluation.true_cfg")
        for suite in filter(None, (self.suite, self.probe_suite)):  # said now, not after the first trial's training
            if settings.sampler is None:
                check_sampling(bundle, suite.spec, f"suite {suite.name}", " (or set evaluation.sampler)")
            else:
                check_sampling(bundle, self.sampling(suite), f"suite {suite.name} with evaluation.sampler")
        self.references = references
        self._reference_cache: dict = {}
        self.scorers = scorers
        ctx = EvalContext(self._reference_cache)
        for scorer in self.scorers:
            scorer.prepare(references, ctx)

    def sampling(self, suite: Suite):
        """The suite's sampling settings with the evaluation's overrides (batch size, sampler, Flux's true CFG)."""
        given = {"batch_size": self.settings.batch_size, "sampler": self.settings.sampler, "true_cfg": self.settings.true_cfg}
        update = {k: v for k, v in given.items() if v is not None}
        return suite.spec.model_copy(update=update) if update else suite.spec

    @property
    def personality_probes(self) -> Suite:
        """What personality is measured on: the probe suite, else the suite's personality prompts, else all of it."""
        return self.probe_suite or self.suite.of_kind("personality") or self.suite

    def samples(self, embedding: Embedding, name: str | None = None, suite: Suite | None = None, on_progress=None) -> list[Sample]:
        """Generate the suite's (prompt, seed) images with `embedding` set on the loaded model."""
        suite = suite or self.suite
        name = name or embedding.name
        sampling = self.sampling(suite)
        vectors = vectors_for(embedding, self.bundle)
        prompts = [text.replace("[name]", name) for _, text, _, _ in suite.items]
        seeds = [seed for *_, seed in suite.items]
        images: list[Image.Image] = []
        step = sampling.batch_size
        with embedding_active(self.bundle, vectors):
            for start in range(0, len(prompts), step):
                images += generate(
                    self.bundle, prompts[start : start + step], seeds[start : start + step], sampling, name=name,
                    n_vectors=embedding.n_vectors,
                )
                if on_progress:
                    on_progress(len(images), len(prompts))
        kinds = ["personality"] * len(suite.items) if suite is self.probe_suite else [kind for _, _, kind, _ in suite.items]
        return [
            Sample(image, prompt, text.replace("[name]", ""), seed, kind, index, bool(suite.spec.prompts[index].photo))
            for image, prompt, kind, (index, text, _, seed) in zip(images, prompts, kinds, suite.items)
        ]

    @property
    def personality_scorer(self) -> Scorer | None:
        return next((s for s in self.scorers if s.name == "personality"), None)

    def probes(self, embedding: Embedding, name: str | None = None, on_progress=None) -> list[Sample] | None:
        """The probe suite's images (None without a probe suite, or without the personality scorer to read them)."""
        if self.probe_suite is None or self.personality_scorer is None:
            return None
        return self.samples(embedding, name, self.probe_suite, on_progress)

    def image_attributes(self) -> list[dict] | None:
        """Per image of the dataset, its personality labels (None without the personality scorer)."""
        scorer = self.personality_scorer
        return scorer.attributes if scorer else None

    @property
    def label_sets(self) -> dict[str, list[str]]:
        """The personality label sets ({} without the personality scorer)."""
        scorer = self.personality_scorer
        return dict(scorer.classifier.label_sets) if scorer else {}

    def personality(self, embedding: Embedding, name: str | None = None) -> dict:
        """Only the personality histograms of `embedding`, on the personality probes: {label set: counts}."""
        result = self.personality_scorer.score(self.samples(embedding, name, self.personality_probes), EvalContext(self._reference_cache))
        return {label_set: h["generated"] for label_set, h in result.extras["personality"].items()}

    def evaluate(self, embedding: Embedding, *, name: str | None = None, suite: Suite | None = None, on_progress=None,
                 untrained: dict | None = None, trained_on: list[str] | None = None) -> Scorecard:
        """Generate and score `suite` (the evaluator's own by default; with a probe suite, its images too)."""
        whole = suite is None or suite is self.suite
        suite = suite or self.suite
        extra = len(self.probe_suite.items) if whole and self.probe_suite and self.personality_scorer else 0
        total = len(suite.items) + extra
        samples = self.samples(embedding, name, suite, on_progress and (lambda done, _: on_progress(done, total)))
        probes = self.probes(embedding, name, on_progress and (lambda done, _: on_progress(len(samples) + done, total))) if extra else None
        return self.score(samples, embedding, suite, name, untrained=untrained, probes=probes, trained_on=trained_on)

    def score(self, samples: list[Sample], embedding: Embedding, suite: Suite | None = None, name: str | None = None,
              untrained: dict | None = None, probes: list[Sample] | None = None, trained_on: list[str] | None = None) -> Scorecard:
        """Run every scorer on generated samples (of `suite`, the evaluator's own by default). `untrained`:
        the untrained start's personality histograms, for the personality shift (a sweep measures them).
        With a probe suite, personality scores `probes` (its images) and is left out when they are not given
        (intermediate evaluations generate part of the suite only). `trained_on`: the file names of the images
        the embedding was trained on when they are part of the references' training images (a trial's subset):
        personality's dataset side counts those only."""
        suite = suite or self.suite
        ctx = EvalContext(self._reference_cache)
        ctx.embedding, ctx.encoders, ctx.untrained, ctx.trained_on = embedding, self.bundle.encoders, untrained, trained_on
        ctx.vectors = vectors_for(embedding, self.bundle)
        rows = [
            {"prompt_index": s.prompt_index, "kind": s.kind, "prompt": s.prompt, "clean_prompt": s.clean_prompt, "seed": s.seed}
            for s in samples
        ]
        summary: dict[str, float] = {}
        extras: dict = {}
        arrays: dict = {}
        probe_rows: list[dict] = []
        for scorer in self.scorers:
            if scorer.name == "personality" and self.probe_suite is not None:
                if probes is None:
                    continue
                result = scorer.score(probes, ctx)
                probe_rows = [{"prompt": s.prompt, "seed": s.seed, **row} for s, row in zip(probes, result.rows)]
            else:
                result = scorer.score(samples, ctx)
                for row, extra in zip(rows, result.rows):
                    row.update(extra)
            summary.update(result.summary)
            extras.update(result.extras)
            arrays.update(result.arrays)
        card = Scorecard(pd.DataFrame(rows), summary, self.protocol(suite, embedding), extras, arrays, [s.image for s in samples])
        card.grid = self.grid(samples, suite, name or embedding.name, summary)
        if probes:
            card.extras["personality_probes"] = probe_rows
            card.probe_grid = self.grid(probes, self.probe_suite, name or embedding.name, {})
        return card

    def grid(self, samples: list[Sample], suite: Suite, name: str, summary: dict) -> Image.Image:
        """Prompts down, seeds across, with the headline scores in the title."""
        seeds = suite.seeds
        by_key = {(s.prompt_index, s.seed): s.image for s in samples}
        rows = suite.prompt_indices  # a subset of the suite (intermediate evaluations) draws its own prompts only
        n_prompts = len(rows)
        size = samples[0].image.size if samples else (64, 64)
        blank = Image.new("RGB", size, (235, 235, 235))
        cells = [by_key.get((p, seed), blank) for p in rows for seed in seeds]
        labels = [f"[{suite.spec.prompts[p].kind[:3]}] {suite.spec.prompts[p].text.replace('[name]', name)}" for p in rows]
        head = [f"{key.split('.')[-1] if '.' in key else key} {summary[key]:.3f}" for key in HEADLINES if key in summary]
        return image_grid(cells, n_prompts, len(seeds), row_labels=labels, col_labels=[f"seed {s}" for s in seeds],
                          title=f"{name}   " + "   ".join(head))

    def protocol(self, suite: Suite, embedding: Embedding) -> dict:
        spec = self.sampling(suite)  # what the images were drawn with
        protocol = {
            "suite": suite.name, "suite_sha256": suite.sha256, "seeds": suite.seeds, "sampler": spec.sampler,
            "steps": spec.steps, "cfg": spec.cfg, "true_cfg": spec.true_cfg, "negative_prompt": spec.negative_prompt,
            "size": [spec.width or self.bundle.default_size, spec.height or self.bundle.default_size],
            "model": {"name": self.bundle.name, "short_hash": self.bundle.short_hash, "family": self.bundle.family.value,
                      "dtype": str(self.bundle.dtype).removeprefix("torch.")},
            "embedding": {"name": embedding.name, "vectors": embedding.n_vectors, "step": embedding.step},
            "references": len(self.references.images),
            "references_held_out": self.references.heldout,
            "training_images": len(self.references.training),
            "photo_prompts": [i for i, p in enumerate(spec.prompts) if p.photo],
            "personality_suite": None if self.probe_suite is None else {
                "suite": self.probe_suite.name, "suite_sha256": self.probe_suite.sha256, "images": len(self.probe_suite.items)},
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
