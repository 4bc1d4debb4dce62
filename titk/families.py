"""The family table: one spec per model family, read by loading, embeddings, inspect, formats and sampling.

Adding a family means one `FamilySpec` here plus one conditioning adapter in `titk.models.families`; no loop
changes. The table is plain data (no torch, no diffusers) so that every package may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

PAD_END = "<|endoftext|>"  # SD1 and CLIP-L pad with the end token
PAD_EXCLAMATION = "!"  # the OpenCLIP encoders (SD2, SDXL's CLIP-G) pad with "!" (id 0)
PAD_T5 = "<pad>"  # T5 pads with its own token (id 0) and has no start token


@dataclass(frozen=True)
class EncoderSpec:
    key: str  # the name of this encoder's tensor in an embedding file (clip_l, clip_h, clip_g, t5)
    width: int
    pad: str = PAD_END
    tokenizer_attr: str = "tokenizer"  # the diffusers pipeline's attribute names
    model_attr: str = "text_encoder"
    checkpoint_prefix: str = ""  # where its weights live in an original-layout single file
    openclip_layout: bool = False  # fused q/k/v and `resblocks` in single files
    truncates_init_text: bool = False  # A1111 cuts the init text to N tokens for OpenAI CLIP, not OpenCLIP


@dataclass(frozen=True)
class FamilySpec:
    name: str
    label: str
    encoders: tuple[EncoderSpec, ...]
    pipeline_class: str | None  # None: titk reads and writes its embeddings but loads no such model
    configs: tuple[str, ...] = ()  # config folders shipped in titk/models/configs (the first is the default)
    kohya_arch: str | None = None  # `ss_base_model_version`-style architecture name in kohya's metadata
    zero_empty_negative: bool = False  # an empty negative prompt is encoded as zeros (SDXL's convention)
    # None: DDPM (ε or v); else flow matching with this timestep density (diffusers' weighting_scheme names)
    flow_matching: str | None = None
    denoiser_attr: str = "unet"  # the pipeline's denoiser: a UNet, or SD3's and Flux's transformer
    optional_encoders: tuple[str, ...] = ()  # encoders a model may lack (SD3 without T5 is legal)
    one_chunk: bool = False  # each encoder reads one sequence, as SD3's and Flux's pipelines (CLIP 77, T5 longer), not A1111's chunks
    default_size: int | None = None  # pixels, for denoisers whose config names no sample size (Flux)
    samplers: tuple[str, ...] | None = None  # the samplers its pipeline can run, when not every one of titk's
    size_multiple: int | None = None  # image sides must be multiples of this (Flux: its transformer reads 2×2 latent patches)

    @property
    def encoder_keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.encoders)

    def side_problem(self, name: str, value: int | None) -> str | None:
        """What is wrong with an image side of `value` px set by `name`, or None (no rule, or a side it keeps)."""
        if self.size_multiple and value is not None and value % self.size_multiple:
            return f"{name} {value} px; {self.label} needs multiples of {self.size_multiple} px"
        return None

    def usable_sampler(self, name: str) -> str:
        """`name` if this family's pipeline can run it, else the family's first sampler (Flux: Euler)."""
        return name if not self.samplers or name in self.samplers else self.samplers[0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(e.width for e in self.encoders)

    @property
    def main_encoder(self) -> EncoderSpec:
        """The encoder whose token table identifies the family in a single file (the widest one)."""
        return max(self.encoders, key=lambda e: e.width)


_CLIP_L = dict(key="clip_l", width=768, truncates_init_text=True)

FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            "sd1", "SD1.x (CLIP ViT-L, 768)",
            (EncoderSpec(**_CLIP_L, checkpoint_prefix="cond_stage_model.transformer.text_model."),),
            "StableDiffusionPipeline", ("sd1",), "stable-diffusion-v1",
        ),
        FamilySpec(
            "sd2", "SD2.x (OpenCLIP ViT-H, 1024)",
            (EncoderSpec("clip_h", 1024, PAD_EXCLAMATION, checkpoint_prefix="cond_stage_model.model.", openclip_layout=True),),
            "StableDiffusionPipeline", ("sd2", "sd2-v"), "stable-diffusion-v2-768-v",
        ),
        FamilySpec(
            "sdxl", "SDXL (768 + 1280)",
            (
                EncoderSpec(**_CLIP_L, checkpoint_prefix="conditioner.embedders.0.transformer.text_model."),
                EncoderSpec("clip_g", 1280, PAD_EXCLAMATION, "tokenizer_2", "text_encoder_2",
                            "conditioner.embedders.1.model.", openclip_layout=True),
            ),
            "StableDiffusionXLPipeline", ("sdxl",), "stable-diffusion-xl-v1-base", zero_empty_negative=True,
        ),
        FamilySpec(
            "sd3", "SD3/SD3.5 (768 + 1280 + 4096)",
            (
                # Stability's single files hold each encoder in Hugging Face's layout under text_encoders.*
                EncoderSpec("clip_l", 768, checkpoint_prefix="text_encoders.clip_l.transformer.text_model."),
                EncoderSpec("clip_g", 1280, PAD_EXCLAMATION, "tokenizer_2", "text_encoder_2", "text_encoders.clip_g.transformer.text_model."),
                EncoderSpec("t5", 4096, PAD_T5, "tokenizer_3", "text_encoder_3", "text_encoders.t5xxl.transformer."),
            ),
            "StableDiffusion3Pipeline", ("sd3",), "stable-diffusion-3",
            flow_matching="logit_normal", denoiser_attr="transformer", optional_encoders=("t5",), one_chunk=True,
        ),
        FamilySpec(
            "flux", "Flux.1 (768 + 4096)",
            (EncoderSpec("clip_l", 768), EncoderSpec("t5", 4096, PAD_T5, "tokenizer_2", "text_encoder_2")),
            "FluxPipeline", ("flux",), "flux-1-dev",
            # uniform timesteps on the unshifted schedule, as diffusers' Flux training scripts draw them
            flow_matching="none", denoiser_attr="transformer", one_chunk=True, default_size=1024,
            samplers=("euler",),  # its pipeline shifts the schedule per resolution (mu), which only Euler takes
            size_multiple=16,
        ),
    )
}

# Every encoder key a multi-encoder file may hold, and the key a bare tensor of a width stands for.
ENCODER_KEYS = ("clip_l", "clip_g", "t5")
KEY_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g", 4096: "t5"}
# Other names files use for an encoder's tensor: ComfyUI reads T5 vectors under `t5xxl` (its tokenizer's
# embedding key), OneTrainer writes `t5`; titk reads both and writes both.
KEY_ALIASES = {"t5xxl": "t5"}


def family_spec(name: str) -> FamilySpec:
    return FAMILIES[name]


def family_by_encoders(widths: dict[str, int]) -> str | None:
    """The family a set of encoder tensors (key → width) belongs to, or None."""
    found = tuple(sorted(widths.items()))
    for spec in FAMILIES.values():
        if tuple(sorted((e.key, e.width) for e in spec.encoders)) == found:
            return spec.name
    return None
