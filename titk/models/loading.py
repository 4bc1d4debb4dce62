"""Loading a model into a ModelBundle from a diffusers folder, a single-file checkpoint or a hub id.

Single files load fully offline (single_file.py): titk ships the small config folders of each family (JSON
only) and builds the CLIP tokenizer from open_clip's vocabulary, so nothing is fetched from a hub; a FLUX.1
file, which holds its transformer alone, takes the rest from the diffusers folder given as `config_dir`.
`.ckpt` files are read with `torch.load(weights_only=True)` only: a pickle that would run code is refused,
never run.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, parse
from ..devices import resolve_device, resolve_dtype
from ..embeddings.library import read_library
from ..embeddings.placeholder import splice
from ..errors import TitkError, first_line
from ..hashing import sharded_short_hash, short_hash
from ..paths import TOY_SOURCES, toyworld_model
from .bundle import ModelBundle, TextEncoderSlot
from .families import Family, detect_checkpoint, detect_folder, family_of_pipeline
from .pipelines import keep_vae_safe, pipeline_class, sd_only_kwargs, shipped_config  # noqa: F401 (shipped_config: titk.models.loading's API)
from .single_file import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, load_single_file, read_checkpoint_index, sd2_prediction_type

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(source: str | Path | ModelConfig, **settings) -> ModelBundle:
    """Load a diffusers folder, a .safetensors/.ckpt file or a hub id as a frozen ModelBundle.

    `settings` are ModelConfig fields (dtype, device, config_dir, prediction_type, clip_skip, embeddings_dir).
    """
    config = source if isinstance(source, ModelConfig) else parse(
        ModelConfig, {"source": str(source), **settings}, "model"
    )
    torch_device = resolve_device(config.device)
    torch_dtype = resolve_dtype(config.dtype or "auto", torch_device)
    kind, where = _resolve_source(config.source)
    with quiet_libraries():
        if kind == "folder":
            pipe, file_hash = _load_folder(where, torch_dtype), _folder_hash(where)
            name = where.name
        elif kind == "file":
            pipe = load_single_file(where, torch_dtype, config.config_dir, config.prediction_type)
            file_hash, name = short_hash(where), where.stem
        else:
            folder = _download(str(where))
            pipe, file_hash, name = _load_folder(folder, torch_dtype), _folder_hash(folder), str(where)
    bundle = bundle_from_pipeline(
        pipe, name=name, source=config.source, short_hash=file_hash, device=torch_device,
        prediction_type=config.prediction_type, clip_skip=config.clip_skip,
    )
    if config.embeddings_dir is not None:
        bundle.use_library(read_library(config.embeddings_dir, bundle))
    return bundle


def bundle_from_pipeline(
    pipe,
    *,
    name: str,
    source: str,
    short_hash: str | None = None,
    device: torch.device | str = "cpu",
    prediction_type: str | None = None,
    clip_skip: int = 1,
) -> ModelBundle:
    """Freeze a diffusers pipeline and wrap it as a ModelBundle (also used for models built in memory)."""
    family = family_of_pipeline(pipe)
    device = torch.device(device)
    pipe.to(device)
    for module in _modules(pipe):
        module.requires_grad_(False)
        module.eval()
    if family.spec.flow_matching:
        if prediction_type not in (None, "flow"):
            raise TitkError(f"model.prediction_type: {prediction_type} does not apply to {family.spec.label}, which is trained by flow matching")
        prediction = "flow"
    else:
        prediction = prediction_type or pipe.scheduler.config.get("prediction_type", "epsilon")
        if pipe.scheduler.config.get("prediction_type") != prediction:
            pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, prediction_type=prediction)
    encoders = [
        TextEncoderSlot(e.key, getattr(pipe, e.tokenizer_attr), getattr(pipe, e.model_attr), e.truncates_init_text)
        for e in family.spec.encoders
        if getattr(pipe, e.model_attr, None) is not None or e.key not in family.spec.optional_encoders  # SD3 without T5
    ]
    for enc in encoders:
        splice(enc.model)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return ModelBundle(
        family=family, pipeline=pipe, encoders=encoders, prediction_type=prediction,
        dtype=getattr(pipe, family.spec.denoiser_attr).dtype, device=device, name=name, source=source, short_hash=short_hash,
        clip_skip=clip_skip,
    )


def _modules(pipe):
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _resolve_source(source: str | Path) -> tuple[str, Path | str]:
    if str(source) in TOY_SOURCES:  # the toy world's pretrained models, shipped with titk
        return "folder", toyworld_model(TOY_SOURCES[str(source)])
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES:
            raise TitkError(f"{path}: not a model file titk reads (.safetensors or .ckpt, or a diffusers folder)")
        return "file", path
    text = str(source)
    looks_like_path = text.startswith((".", "/", "~")) or path.suffix.lower() in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
    if looks_like_path or not HUB_ID.match(text):
        raise TitkError(f"{source}: no such file or folder")
    return "hub", text


def _folder_hash(folder: Path) -> str | None:
    # A diffusers folder has no single checkpoint file; its denoiser's weights identify the model (SD3.5 large's
    # and Flux's come in shards, hashed together).
    for denoiser in ("unet", "transformer"):
        for suffix in ("safetensors", "bin"):
            path = folder / denoiser / f"diffusion_pytorch_model.{suffix}"
            if path.is_file():
                return short_hash(path)
            if path.with_name(path.name + ".index.json").is_file():
                return sharded_short_hash(path.with_name(path.name + ".index.json"))
    return None


def _load_folder(folder: Path, dtype: torch.dtype):
    family = detect_folder(folder)
    cls = pipeline_class(family)
    try:
        pipe = cls.from_pretrained(folder, dtype=dtype, local_files_only=True, **sd_only_kwargs(family))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise TitkError(f"{folder}: could not load the pipeline: {first_line(exc)}") from None
    keep_vae_safe(pipe, family, dtype)
    return pipe


def _download(repo_id: str) -> Path:
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    try:
        return Path(DiffusionPipeline.download(repo_id))
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        reason = "offline: HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else first_line(exc)
        raise TitkError(
            f"{repo_id}: not on disk and the model hub could not provide it ({reason}); "
            "pass a local path to a diffusers folder or a .safetensors checkpoint"
        ) from None


@contextmanager
def quiet_libraries():
    """diffusers and transformers log progress bars and advice at load time; titk reports its own."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    old = dlogging.get_verbosity(), tlogging.get_verbosity()
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        yield
    finally:
        dlogging.set_verbosity(old[0])
        tlogging.set_verbosity(old[1])
        dlogging.enable_progress_bar()
        tlogging.enable_progress_bar()


# ------------------------------------------------------------------------------------------------ architecture


@dataclass
class Architecture:
    """What planning needs to know about a model, read from its config files without loading weights."""

    family: Family
    unet: dict
    vae_scale: int

    @property
    def default_size(self) -> int:
        sample_size = self.unet.get("sample_size")
        return int(sample_size) * self.vae_scale if sample_size else int(self.family.spec.default_size or 64 * self.vae_scale)


def read_architecture(config: ModelConfig) -> Architecture | None:
    """The model's family and UNet config from JSON alone; None for a hub id that is not cached here."""
    kind, where = _resolve_source(config.source)
    if kind == "hub":
        from huggingface_hub import snapshot_download

        try:
            where = Path(snapshot_download(str(where), allow_patterns=["*.json"], local_files_only=True))
        except Exception:  # not cached: planning goes on without FLOPs
            return None
        kind = "folder"
    if kind == "folder":
        family, folder = detect_folder(where), where
    else:
        keys, shape = read_checkpoint_index(where)
        family = detect_checkpoint(where, keys, shape)
        if config.config_dir is not None:
            folder = Path(config.config_dir)
        elif family is Family.SD2:
            v = config.prediction_type == "v_prediction" or (
                config.prediction_type is None and where.with_suffix(".yaml").is_file()
                and sd2_prediction_type(where, None) == "v_prediction"
            )
            folder = shipped_config("sd2-v" if v else "sd2")
        else:
            folder = shipped_config(family.value)
    architecture = _architecture(family, folder)
    if kind == "file" and family is Family.FLUX and config.config_dir is None:
        # the shipped config is FLUX.1 dev's; a file without its guidance embedding has schnell's layout (256 T5 tokens)
        architecture.unet["guidance_embeds"] = any(k.endswith("guidance_in.in_layer.weight") for k in keys)
    return architecture


def shipped_architecture(family: Family) -> Architecture:
    """A family's standard architecture from the config folder titk ships (no model needed)."""
    return _architecture(family, shipped_config(family.spec.configs[0]))


def _architecture(family: Family, folder: Path) -> Architecture:
    unet = json.loads((folder / family.spec.denoiser_attr / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return Architecture(family, unet, 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1))
