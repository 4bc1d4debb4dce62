"""Scorers: each takes generated samples (and prepared references) and returns one row per image plus
set-level values. Scorers share one EvalContext, which holds the CLIP model and its cached features."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class Sample:
    image: Image.Image
    prompt: str  # as sent to the model, with the embedding's name
    clean_prompt: str  # the name removed, for CLIP-T (the TI paper's protocol)
    seed: int
    kind: str  # identity, editability or personality
    prompt_index: int
    photo: bool = True  # a photograph (the suite's `photo`): only photographs are judged by the face recogniser


@dataclass
class References:
    """The person's real images. `images` are what identity compares samples with; `training`, when known,
    are the images the embedding was trained on and `images` are then held out (never trained on): the copy
    index compares samples with `training`, and CLIP-I and personality's dataset side use `training`.
    Without `training`, `images` are the training images and serve as both."""

    images: list[Image.Image]
    paths: list[Path] = field(default_factory=list)
    training: list[Image.Image] = field(default_factory=list)
    training_paths: list[Path] = field(default_factory=list)
    source: str = ""  # where `images` came from, in words, for the scorecard's protocol

    @property
    def heldout(self) -> bool:
        return bool(self.training)

    @property
    def dataset(self) -> list[Image.Image]:
        """The images trained on, as far as known."""
        return self.training or self.images


@dataclass
class ScoreResult:
    """What a scorer returns: one dict per sample (in order), summary values, and what else it found."""

    rows: list[dict]
    summary: dict[str, float]
    extras: dict = field(default_factory=dict)  # JSON-able (histograms, norms)
    arrays: dict = field(default_factory=dict)  # numpy arrays (face embeddings)


class Scorer:
    name = "scorer"

    def prepare(self, refs: References, ctx) -> None:
        """Work on the references, done once for many evaluations."""

    def score(self, samples: list[Sample], ctx) -> ScoreResult:
        raise NotImplementedError

    def protocol(self) -> dict:
        return {}
