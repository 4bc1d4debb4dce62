"""Typed configuration. Every default of titk lives in this file, once.

Configs are read in one way (titk/settings_files.py): a YAML file, then overrides deep-merged into it,
then validated by pydantic. A sweep's `base:` file is read first, and its `base_overrides` and every `--set`
are merged into it, so a setting given on the command line works whether the base is inline or a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import TitkError
from .settings_files import (  # noqa: F401  (the config API)
    apply_overrides,
    load_config,
    merge,
    parse,
    parse_override,
    read_yaml,
    validation_message,
)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
CONTEXT_TOKENS = 77  # one CLIP prompt chunk: start, 75 tokens, end
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack: a chunk ending within 20 tokens of a comma breaks there
RESOLUTION = 512  # SD1's training size; used where no model says otherwise (a plan without a model, dataset check)


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt setting must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    source: str = Field(description="diffusers folder, .safetensors/.ckpt checkpoint, or hub id")
    config_dir: Path | None = Field(None, description="diffusers config folder for a non-standard single file")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="override the model's eps/v parameterisation"
    )
    dtype: Precision | None = Field(None, description="precision of the frozen model; default auto (training: the semantics')")
    device: str = "auto"
    clip_skip: int = Field(1, ge=1, le=12, description="A1111's 'CLIP skip': 1 = last layer")
    embeddings_dir: Path | None = Field(
        None, description="a folder of other embeddings (A1111's embeddings folder) that prompts may name; loaded frozen"
    )


# ------------------------------------------------------------------------------------------------ training

SEMANTICS_DEFAULTS = {
    # A1111: AdamW without weight decay, no clipping, init text stretched over the vectors, file names
    # numbered one ahead of the step they hold, captions through a template with [name] and [filewords],
    # <stem>.txt captions, images stretched, one latent sample per image kept for the run, A1111's .pt files.
    "a1111": dict(
        weight_decay=0.0, clip_mode="none", clip_threshold="0.1", init_mode="stretch", numbering="a1111",
        template="titk-subject-filewords", learning_rate="0.005", caption_extension=".txt", resize="stretch",
        latent_sampling="once", dtype="auto", max_steps=None, layout="a1111",
    ),
    # kohya (sd-scripts train_textual_inversion.py and library/train_util.py argument defaults): weight decay
    # 0.01 (AdamW's own), gradient-norm clip 1.0, init tokens cycled, the caption is the prompt, LR 2e-6,
    # <stem>.caption, cover and centre-crop (no --enable_bucket), the VAE run every step (a new posterior
    # sample each use; `once` is --cache_latents), no mixed precision, 1600 steps, `emb_params` files.
    "kohya": dict(
        weight_decay=0.01, clip_mode="norm", clip_threshold="1.0", init_mode="cycle", numbering="exact",
        template="titk-filewords", learning_rate="2e-06", caption_extension=".caption", resize="crop",
        latent_sampling="random", dtype="fp32", max_steps=1600, layout="kohya",
    ),
}
DEFAULT_VECTORS = 1
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class EmbeddingConfig(Strict):
    name: str = Field(description="the trigger word; files are <name>.pt / <name>.safetensors")
    vectors: int | None = Field(None, description=f"vectors per token, 1..75; default {DEFAULT_VECTORS}, or init_from's count")
    init_text: str = Field("*", description="text whose token rows start the vectors; empty = zeros")
    init_mode: Literal["stretch", "cycle"] | None = Field(None, description="default: the semantics' (a1111 stretch, kohya cycle)")
    init_from: Path | None = Field(None, description="an embedding file to train further; its vectors replace init_text")
    norm: Literal["free", "vocab"] = Field(
        "free", description="free: vectors grow as they learn (A1111, kohya); vocab: only their direction is learned, "
        "each held at its encoder's vocabulary median norm after every update (see docs/user-guide.md)"
    )


def _caption_extension(value: str | None) -> str | None:
    if value is None:
        return value
    # Path.with_suffix, which finds each caption, accepts only a dot and at least one more character.
    if not value.startswith(".") or len(value) < 2 or "/" in value or "\\" in value:
        raise ValueError(f"{value!r} is not a file extension; write it with its dot, like .txt")
    return value


class DataConfig(Strict):
    path: Path | None = Field(None, description="the image folder (or --dataset)")
    recursive: bool = False
    caption_extension: str | None = Field(None, description="default: the semantics' (a1111 .txt, kohya .caption)")
    filename_regex: str = ""
    filename_join: str = " "
    template: str | None = Field(None, description="a file, a name in template_dir, or titk's own (titk-subject-filewords, ...); default: the semantics'")
    template_dir: Path | None = Field(None, description="a folder of templates, e.g. A1111's textual_inversion_templates")
    shuffle_tags: bool = False
    tag_dropout: float = Field(0.0, ge=0.0, le=1.0)
    resize: Literal["stretch", "native", "crop", "buckets"] | None = Field(None, description="default: the semantics' (a1111 stretch, kohya crop)")
    width: int | None = Field(None, ge=8, description="default: the model's resolution")
    height: int | None = Field(None, ge=8)
    bucket_step: int = Field(64, ge=8)
    latent_sampling: Literal["once", "deterministic", "random"] | None = Field(None, description="default: the semantics' (a1111 once, kohya random)")
    use_alpha: bool = Field(False, description="PNG alpha as loss weight (a1111: min 0, mean 1; kohya: alpha/255 as is)")
    repeats: int = Field(1, ge=1, description="kohya: times each image appears per epoch")
    min_side: int = Field(32, ge=1, description="smaller images are refused")
    on_bad_image: Literal["error", "skip"] = "error"

    _check_caption_extension = field_validator("caption_extension")(_caption_extension)


class TrainSettings(Strict):
    semantics: Literal["a1111", "kohya"] = "a1111"
    learning_rate: str | None = Field(None, description='a rate or an A1111 schedule like "0.005:100, 1e-3:1000"; default: the semantics\'')
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer updates; or give epochs; kohya's default 1600 when neither is given")
    epochs: int | None = Field(None, ge=1, description="derive max_steps from this many passes over the data")
    weight_decay: float | None = Field(None, ge=0.0)
    clip_mode: Literal["none", "value", "norm"] | None = None
    clip_threshold: str | None = Field(None, description="a value or a schedule string like the learning rate")
    gradient_checkpointing: bool = False
    seed: int = 0

    @field_validator("learning_rate", "clip_threshold", mode="before")
    @classmethod
    def _number_as_text(cls, value):
        # YAML reads `learning_rate: 0.005` as a number; the schedule grammar works on text.
        return repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    def resolved(self, key: str):
        value = getattr(self, key)
        return SEMANTICS_DEFAULTS[self.semantics][key] if value is None else value


class SamplingSettings(Strict):
    """How images are generated, for previews and prompt suites alike."""

    sampler: str = Field("dpm++2m", description="dpm++2m, dpm++2m_karras, euler, euler_a, ddim, pndm, unipc")
    steps: int = Field(20, ge=1)
    cfg: float = 7.0
    negative_prompt: str = ""
    width: int | None = Field(None, ge=8, description="default: the model's resolution")
    height: int | None = Field(None, ge=8)
    batch_size: int = Field(4, ge=1, description="images generated per batch (the images do not depend on it)")


class PreviewConfig(SamplingSettings):
    every: int = Field(500, ge=0, description="updates between preview grids; 0 = none")
    prompts: list[str] = Field(default_factory=lambda: ["a photo of [name]"])
    seeds: list[int] = Field(default_factory=lambda: [1, 2])


class OutputConfig(Strict):
    dir: Path | None = Field(None, description="default: runs/<name>")
    save_every: int = Field(500, ge=0, description="updates between checkpoints; 0 = final only")
    numbering: Literal["a1111", "exact"] | None = Field(None, description="a1111: file <name>-N holds N-1 updates")
    layout: Literal["a1111", "kohya"] | None = Field(None, description="a1111: string_to_param .pt, one-key .safetensors; kohya: emb_params (SDXL clip_l/clip_g)")
    formats: list[Literal["pt", "safetensors", "png"]] = Field(default_factory=lambda: ["pt", "safetensors"], description="png: A1111's image embedding")
    keep_states: int = Field(2, ge=1, description="resume states kept")
    preview: PreviewConfig = Field(default_factory=PreviewConfig)


class TrainConfig(Strict):
    model: ModelConfig
    embedding: EmbeddingConfig
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def semantic(self, section: str, key: str):
        """A setting left unset (None) takes its semantics' default from SEMANTICS_DEFAULTS."""
        value = getattr(getattr(self, section), key)
        return SEMANTICS_DEFAULTS[self.train.semantics][key] if value is None else value

    @property
    def template(self) -> str:
        return self.semantic("data", "template")

    @property
    def init_mode(self) -> str:
        return self.semantic("embedding", "init_mode")

    @property
    def numbering(self) -> str:
        return self.semantic("output", "numbering")

    @property
    def layout(self) -> str:
        return self.semantic("output", "layout")

    @property
    def learning_rate(self) -> str:
        return self.semantic("train", "learning_rate")

    @property
    def caption_extension(self) -> str:
        return self.semantic("data", "caption_extension")

    @property
    def resize(self) -> str:
        return self.semantic("data", "resize")

    @property
    def latent_sampling(self) -> str:
        return self.semantic("data", "latent_sampling")

    @property
    def model_settings(self) -> ModelConfig:
        """The model section with the semantics' precision when none is given (kohya: fp32, no mixed precision)."""
        return self.model.model_copy(update={"dtype": self.semantic("model", "dtype")})

    @property
    def output_dir(self) -> Path:
        return self.output.dir or Path("runs") / self.embedding.name


def load_train_config(path: str | Path, *, dataset: str | Path | None = None, output: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    data = apply_overrides(read_yaml(path), list(overrides))
    if dataset is not None:
        data = merge(data, {"data": {"path": str(dataset)}})
    if output is not None:
        data = merge(data, {"output": {"dir": str(output)}})
    return parse(TrainConfig, data, str(path))


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


# ------------------------------------------------------------------------------------------------ sweeps


class ParamSpec(Strict):
    """One searched setting: a `choice` of values, or a range `low`..`high` (ints if both are ints)."""

    choice: list | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None


class ComposeSpec(Strict):
    """Subsets of `size` images of which a searched `share` carry one label of an attribute, drawn from a larger
    pool: a study of how a dataset's composition shapes its TI's personality (the dose-response)."""

    attribute: str = Field(description="a personality label set, e.g. clothing (the toy world's, or evaluation.labels')")
    label: str = Field(description="the label whose share is controlled, as the label set names it, e.g. tank top")
    size: int = Field(ge=1, description="images per trial")
    share: ParamSpec = Field(description="the share of them that carry the label: a choice (e.g. [0.2, 0.5, 0.8]) or a range 0..1")

    @model_validator(mode="after")
    def _shares(self):
        values = self.share.choice if self.share.choice is not None else [self.share.low, self.share.high]
        if not values or any(not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in values):
            raise ValueError(f"share: {values} must be numbers from 0 to 1")
        return self


class SubsetSpec(Strict):
    """Which images a trial trains on: all (default), random subsets, per-image include flags, leave-one-out, or
    subsets of a controlled composition."""

    size: int | ParamSpec | None = Field(None, description="random subsets of this size, drawn in passes so every image is in as many trials (or a searched range of sizes)")
    include_flags: bool = Field(False, description="one include/exclude flag per image, searched")
    leave_one_out: bool = Field(False, description="each trial leaves out one image (or none)")
    min_images: int = Field(3, ge=1, description="with include flags: fewer images is infeasible")
    compose: ComposeSpec | None = Field(None, description="subsets with a searched share of one attribute's label")


class IntermediateSettings(Strict):
    """Which part of the final suite the intermediate evaluations generate: its images at the first `seeds`
    seeds of each prompt, with the final suite's sampling settings, so that an intermediate value and a final
    value are on one scale (the final value is the same mean over more seeds). `per_kind` takes only the
    first prompts of each kind: cheaper, but its mix of kinds is not the final suite's, so its level can differ."""

    seeds: int = Field(1, ge=1, description="the first seeds of each prompt of evaluation.suite")
    per_kind: int | None = Field(None, ge=1, description="only the first prompts of each kind; default: every prompt")


class HoldoutSpec(Strict):
    """Without `references`: dataset images held out of every trial's training, as identity's references."""

    share: float = Field(0.2, ge=0.0, lt=1.0, description="share of the dataset held out; 0 = none")
    min_images: int = Field(2, ge=1, description="held out at least this many")
    min_dataset: int = Field(8, ge=1, description="smaller datasets are not split")


class ObjectiveSettings(Strict):
    metrics: dict[str, float] = Field(default_factory=lambda: {"identity.similarity": 1.0}, description="weighted sum to maximise (a negative weight for a lower-is-better metric)")
    floors: dict[str, float] = Field(default_factory=lambda: {"identity.detection_rate": 0.5}, description="minimum values, as constraints (maximum values for lower-is-better metrics: identity.copy_index)")
    pareto: list[str] | None = Field(None, description="two metrics to maximise together (no pruning)")
    pruner: Literal["median", "wilcoxon", "none"] = "median"
    pruner_startup_trials: int = Field(2, ge=0, description="median: trials that finish before any is pruned")
    pruner_warmup_steps: int = Field(0, ge=0, description="median: steps of each trial before it may be pruned")
    wilcoxon_p: float = Field(0.1, gt=0.0, lt=1.0, description="wilcoxon: p-value below which a trial is pruned")
    eval_every: int | None = Field(None, ge=0, description="steps between intermediate evaluations; default: a quarter of the run; 0 = none")
    intermediate: IntermediateSettings = Field(default_factory=IntermediateSettings, description="the part of the final suite scored every eval_every steps")
    missing_value: float = Field(-1.0, description="value of a metric that is NaN (e.g. similarity when no face was found)")

    @model_validator(mode="before")
    @classmethod
    def _no_intermediate_suite(cls, data):
        # Scores of a separate quick suite did not predict the final ones; the setting that replaced it says so.
        if isinstance(data, dict) and "intermediate_suite" in data:
            raise ValueError(
                "intermediate_suite is gone: intermediate evaluations now generate part of evaluation.suite; "
                "delete it (default: every prompt at its first seed) or write intermediate: {seeds: 1, per_kind: 1}"
            )
        return data


class ConfirmSettings(Strict):
    """After the search: the best trials and the baseline trained again on fresh seeds and compared, paired."""

    top: int = Field(2, ge=0, description="best trials confirmed against the baseline; 0 = no confirmation")
    seeds: int | None = Field(None, ge=2, le=50, description="fresh seeds per setting; default: from the measured seed noise (3 to 10)")
    min_effect: float = Field(0.02, gt=0.0, description="the smallest objective difference worth telling apart (sets the default seeds)")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="confidence of the intervals (Bonferroni-adjusted over the candidates)")


class SweepConfig(Strict):
    study: str = Field(description="the Optuna study name, also the MLflow experiment name")
    base: TrainConfig = Field(description="the training config every trial starts from")
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    subset: SubsetSpec = Field(default_factory=SubsetSpec)
    repeats: int = Field(1, ge=1, description="seeds per trial; the objective is their mean")
    baseline_seeds: int = Field(3, ge=3, description="seeds of the baseline trial (the first enqueued entry, else the base settings): the study's seed noise")
    confirm: ConfirmSettings = Field(default_factory=ConfirmSettings)
    retrain_duplicates: bool = Field(False, description="train a suggestion equal to a measured trial again (default: answer it from that trial)")
    n_trials: int = Field(20, ge=1, description="complete or pruned trials wanted in the study")
    timeout_minutes: float | None = None
    sampler: Literal["tpe", "random", "gp"] = "tpe"
    seed: int = 0
    enqueue: list[dict | str] = Field(default_factory=list, description="first trials: parameter mappings or recipe files")
    bs_ga_within_dataset: bool = Field(True, description="constraint: batch size × GA ≤ number of images")
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    references: Path | None = Field(None, description="photos of the person not in the dataset, for identity (default: held out from the dataset, see holdout)")
    holdout: HoldoutSpec = Field(default_factory=HoldoutSpec, description="without references: dataset images held out of training as identity's references")
    heartbeat_seconds: int = Field(60, ge=1, description="RDB storages: a trial whose worker is silent twice this long is failed and retried")
    max_retries: int = Field(2, ge=0)


def load_sweep_config(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    """A sweep YAML; `base` may be a mapping or the path of a training config (relative to the sweep file).

    The base is read first; `base_overrides`, then each `--set` (in order) are merged into the result."""
    path = Path(path)
    data = read_yaml(path)
    base = data.get("base")
    if isinstance(base, str):
        base = read_yaml(Path(base) if Path(base).is_absolute() else path.parent / base)
    elif base is not None and not isinstance(base, dict):
        raise TitkError(f"{path}: base: expected a mapping of training settings or the path of a training config")
    base_overrides = data.pop("base_overrides", None) or {}
    if not isinstance(base_overrides, dict):
        raise TitkError(f"{path}: base_overrides: expected a mapping of training settings")
    data["base"] = merge(base or {}, base_overrides)
    sets = [f"base.{item.removeprefix('base_overrides.')}" if item.startswith("base_overrides.") else item for item in overrides]
    return parse(SweepConfig, apply_overrides(data, sets), str(path))


# ------------------------------------------------------------------------------------------------ toy world


class PretrainSettings(Strict):
    """The toy world's pretraining; the defaults reproduce the shipped model."""

    seed: int = 0
    images_per_identity: int = Field(64, ge=1)
    vision_steps: int = Field(1000, ge=1)
    vae_steps: int = Field(1500, ge=1)
    unet_steps: int = Field(4000, ge=1)
    stop_at: int | None = Field(3500, ge=1, description="end the UNet here, still on unet_steps' learning-rate schedule")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = 3e-4
    ema: float = 0.999
    caption_dropout: float = 0.1
    eval_every: int = Field(500, ge=1)
    continue_from: str | None = Field(None, description="a saved toy model folder: continue its UNet and text encoder")
