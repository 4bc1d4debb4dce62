"""The model, dataset, embedding, training and output settings of one TI run (and the toy world's pretraining)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..settings_files import apply_overrides, merge, parse, read_yaml

Precision = Literal["auto", "fp32", "bf16", "fp16"]
CONTEXT_TOKENS = 77  # one CLIP prompt chunk: start, 75 tokens, end
SD3_T5_TOKENS = 256  # the most tokens SD3's T5 reads (its pipeline's max_sequence_length)
FLUX_T5_TOKENS = 512  # the most tokens Flux's T5 reads (FLUX.1 dev's pipeline pads to 512)
FLUX_SCHNELL_T5_TOKENS = 256  # FLUX.1 schnell's (no guidance embedding): its model card samples with max_sequence_length=256
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
    cross_init: bool = Field(False, description="start from the text encoder's output for init_text (cross-initialisation) "
                             "instead of its token rows")
    train_t5: bool = Field(False, description="SD3: train the T5 vectors too; by default they stay at init_text's rows and "
                           "only the CLIP vectors learn (T5-only embeddings are reported to change little)")
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
    channels_last: bool = Field(False, description="the frozen UNet in channels-last memory format while training (faster "
                                "convolutions on GPUs; the same vectors within rounding)")
    compile: bool = Field(False, description="torch.compile the frozen UNet while training, one graph per batch shape (a "
                          "first step of minutes, then faster steps on GPUs; the same vectors within rounding)")
    host_sync: Literal["micro_batch", "update"] = Field(
        "micro_batch", description="when the loss comes back from the device: after each micro-batch, or once per update "
        "(the GPU then runs an update's micro-batches without waiting for the host; the same vectors)")
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
    true_cfg: float | None = Field(
        None, gt=1.0, description="Flux only: classifier-free guidance at this scale, a negative pass each step (diffusers' "
        "true_cfg_scale), for a Flux model that was not guidance-distilled; Flux's cfg is a distilled guidance, which "
        "such a model ignores (other families' cfg is classifier-free guidance already)")
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


# ------------------------------------------------------------------------------------------------ toy world


class PretrainSettings(Strict):
    """The toy world's pretraining; the defaults reproduce the shipped SD1 model, `shipped(family)` any family's."""

    family: Literal["sd1", "sdxl", "sd3", "flux"] = "sd1"
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
    partial_captions: float = Field(0.0, ge=0, le=1, description="the share of images whose caption leaves out each of framing, "
                                    "clothing and background with even odds, so that prompts which leave them open are ones the model knows")
    timestep_weighting: Literal["logit_normal", "none"] | None = Field(
        None, description="flow-matching families: how σ is drawn (logit_normal or none, uniform; default: the family's as a TI trains)")
    eval_every: int = Field(500, ge=1)
    continue_from: str | None = Field(None, description="a saved toy model folder: continue its UNet and text encoder")
    shared_from: str | None = Field(None, description="a family other than sd1: the toy world folder whose vision model and VAE it reuses (default: the shipped one)")

    @classmethod
    def shipped(cls, family: str = "sd1", **given) -> PretrainSettings:
        """The settings of `family`'s shipped toy model, with `given` changed."""
        return cls(**{**SHIPPED_PRETRAINING.get(family, {}), "family": family, **given})


# Where a family's shipped toy model was trained differently from the SD1 defaults above.
SHIPPED_PRETRAINING = {
    "sdxl": {"unet_steps": 3000, "stop_at": None},
    # The MMDiT costs twice the SDXL UNet per image on a CPU: half the batch, more steps.
    "sd3": {"unet_steps": 3200, "stop_at": None, "batch_size": 32},
    "flux": {"unet_steps": 3000, "stop_at": None, "batch_size": 32},
}
