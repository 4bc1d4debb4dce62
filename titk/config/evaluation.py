"""Evaluation settings: prompt suites, the scorers' models, `titk eval` and `titk dataset check`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .training import (
    RESOLUTION,
    ModelConfig,
    SamplingSettings,
    Strict,
    _caption_extension,
)

# ------------------------------------------------------------------------------------------------ evaluation

SCORERS = ("identity", "clip", "diversity", "personality", "norms")
SUITE_KINDS = ("identity", "editability", "personality")


# The default of a prompt's `photo`: a prompt that says photo is one ("a photo of [name] in front of a statue");
# otherwise one that names another medium is not; otherwise it is.
PHOTO = ("photo", "photograph", "headshot", "selfie", "snapshot")
NOT_A_PHOTO = (
    "painting", "painted", "sketch", "drawing", "drawn", "watercolor", "watercolour", "illustration", "cartoon",
    "anime", "manga", "comic", "sculpture", "statue", "figurine", "render", "rendering", "pixel art", "line art",
    "lineart", "engraving", "etching", "woodcut", "charcoal", "crayon", "caricature", "doodle", "mosaic",
)
_PHOTO, _NOT_A_PHOTO = (re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")s?\b", re.IGNORECASE) for words in (PHOTO, NOT_A_PHOTO))


class SuitePrompt(Strict):
    text: str
    kind: Literal["identity", "editability", "personality"] = "identity"
    seeds: list[int] | None = None
    photo: bool | None = Field(
        None, validate_default=True,
        description="a photograph: identity is measured on photographs only (a face recogniser does not judge a "
        "painting); default: true when the text says photo, else false when it names another medium (painting, sketch, ...)",
    )

    @field_validator("photo")
    @classmethod
    def _photo_from_text(cls, value, info):
        if value is None:
            text = info.data.get("text", "")
            return bool(_PHOTO.search(text)) or not _NOT_A_PHOTO.search(text)
        return value


class PromptSuite(SamplingSettings):
    """A prompt suite file: sampling settings, seeds, and prompts each with a kind."""

    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    prompts: list[SuitePrompt] = Field(min_length=1)


class IdentitySettings(Strict):
    pack: str = Field("buffalo_l", description="insightface pack name (under <root>/models/) or folder")
    root: Path | None = Field(None, description="default: $TITK_INSIGHTFACE_ROOT or ~/.insightface")
    det_size: int = Field(640, ge=32)
    det_thresh: float = Field(0.5, gt=0.0, lt=1.0)


class ClipSettings(Strict):
    model: str = "ViT-B-32"
    pretrained: str | None = Field("openai", description="open_clip tag, a local weights file, or null (random: tests only)")
    second_model: str | None = Field(None, description="an independent second judge, e.g. ViT-H-14")
    second_pretrained: str | None = None
    batch_size: int = Field(32, ge=1)


class EvalSettings(Strict):
    world: Literal["real", "toyworld"] = Field("real", description="toyworld: the toy world's own face embedder and attribute classifier")
    suite: str = Field("person", description="experiments/prompts/<name>.yaml or a path")
    scorers: list[Literal["identity", "clip", "diversity", "personality", "norms"]] = Field(default_factory=lambda: list(SCORERS))
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    personality_suite: str | None = Field(
        None, description="a suite of neutral probes personality is measured on, apart from `suite` (e.g. personality, "
        "toy-personality: prompts that leave clothing, background and framing open, enough seeds for narrow intervals); "
        "default: the personality prompts of `suite`")
    labels: str = Field("personality-labels", description="label sets for personality: experiments/prompts/<name>.yaml or a path")
    batch_size: int | None = Field(None, ge=1, description="images generated per batch; default: the suite's")
    sampler: str | None = Field(None, description="sample every suite with this sampler instead of the suite's (e.g. euler, "
                                "the one Flux runs, for the toy suites); default: the suite's")
    true_cfg: float | None = Field(None, gt=1.0, description="Flux only: sample every suite with classifier-free guidance at "
                                   "this scale (a negative pass each step), for a Flux model not guidance-distilled such as "
                                   "the toy one; default: the suite's true_cfg, usually none")
    max_references: int = Field(64, ge=1, description="reference images used at most (the first, in name order)")


class DatasetCheckSettings(Strict):
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    size: int = Field(RESOLUTION, ge=8, description="training size, for the bucket each image falls in")
    bucket_step: int = Field(64, ge=8)
    caption_extension: str = ".txt"

    _check_caption_extension = field_validator("caption_extension")(_caption_extension)


class EvalConfig(Strict):
    model: ModelConfig
    references: Path | None = Field(None, description="photos of the person, best not trained on (titk eval: --references)")
    train_images: Path | None = Field(None, description="the images the embedding was trained on: with references held out, the copy index (titk eval: --train-images)")
    evaluation: EvalSettings = Field(default_factory=EvalSettings)


