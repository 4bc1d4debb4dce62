"""Loading a model into a ModelBundle from a diffusers folder, a single-file checkpoint or a hub id.

Single files load fully offline: titk ships the small config folders of each family (JSON only) and
builds the CLIP tokenizer from open_clip's vocabulary, so nothing is fetched from a hub. `.ckpt` files
are read with `torch.load(weights_only=True)` only: a pickle that would run code is refused, never run.
"""

from __future__ import annotations

import importlib.resources
import json
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import CONTEXT_TOKENS, ModelConfig, parse
from ..devices import resolve_device, resolve_dtype
from ..embeddings.library import read_library
from ..embeddings.placeholder import splice
from ..errors import TitkError, UnknownArchitecture
from ..hashing import sharded_short_hash, short_hash
from ..paths import TOY_SOURCES, toyworld_model
from .bundle import ModelBundle, TextEncoderSlot
from .families import UNET_PREFIX, Family, detect_checkpoint, detect_folder, family_of_pipeline, token_table_key
from .tokenizer import clip_tokenizer

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def shipped_config(name: str) -> Path:
    """One of the per-family config folders inside the package: sd1, sd2, sd2-v, sdxl."""
    return Path(str(importlib.resources.files("titk.models").joinpath("configs", name)))


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
            pipe = _load_single_file(where, torch_dtype, config.config_dir, config.prediction_type)
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


def _pipeline_class(family: Family):
    import diffusers

    return getattr(diffusers, family.spec.pipeline_class)


def _sd_only_kwargs(family: Family) -> dict:
    if family.spec.pipeline_class != "StableDiffusionPipeline":
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _load_folder(folder: Path, dtype: torch.dtype):
    family = detect_folder(folder)
    cls = _pipeline_class(family)
    try:
        pipe = cls.from_pretrained(folder, dtype=dtype, local_files_only=True, **_sd_only_kwargs(family))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise TitkError(f"{folder}: could not load the pipeline: {_first_line(exc)}") from None
    _keep_vae_safe(pipe, family, dtype)
    return pipe


def _keep_vae_safe(pipe, family: Family, dtype: torch.dtype) -> None:
    # The SDXL VAE overflows in fp16 (black images, NaN latents); bf16 and fp32 are safe.
    if family is Family.SDXL and dtype == torch.float16:
        pipe.vae.to(torch.float32)


def _download(repo_id: str) -> Path:
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    try:
        return Path(DiffusionPipeline.download(repo_id))
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        reason = "offline: HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _first_line(exc)
        raise TitkError(
            f"{repo_id}: not on disk and the model hub could not provide it ({reason}); "
            "pass a local path to a diffusers folder or a .safetensors checkpoint"
        ) from None


# ------------------------------------------------------------------------------------------------ single file


def read_checkpoint_index(path: Path) -> tuple[set[str], callable]:
    """Key names of a single-file checkpoint and a function giving a key's shape, loading as little as possible."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        except Exception as exc:  # safetensors raises its own error type for every malformed file
            raise TitkError(
                f"{path}: not a readable .safetensors file ({_first_line(exc)}); it may be truncated or incomplete"
            ) from None
        return keys, lambda k: shapes[k]
    state = load_pickle_state_dict(path)
    return set(state), lambda k: tuple(state[k].shape)


def load_pickle_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `.ckpt`-style state dict, through `torch.load(weights_only=True)` only."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TitkError(
            f"{path}: refused: this pickle needs code to run when loaded ({_unsafe_reason(exc)}); titk never "
            "runs such files. Convert it to .safetensors with a tool you trust"
        ) from None
    except Exception as exc:  # a damaged pickle fails in many ways (EOFError, struct.error, RuntimeError ...)
        raise TitkError(f"{path}: not a readable checkpoint ({_first_line(exc)}); it may be truncated") from None
    while isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TitkError(f"{path}: not a checkpoint state dict")
    return obj


def _unsafe_reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return f"it calls {match.group(1)}" if match else "it holds objects other than tensors"


def _load_single_file(path: Path, dtype: torch.dtype, config_dir, prediction_type: str | None):
    keys, shape = read_checkpoint_index(path)
    family = detect_checkpoint(path, keys, shape)
    if config_dir is not None:
        config = Path(config_dir)
        if not (config / "model_index.json").is_file():
            raise TitkError(f"{config}: not a diffusers config folder (no model_index.json)")
    else:
        config = shipped_config(family.spec.configs[0])
    parts = _sd3_encoders(path, keys, config) if family is Family.SD3 else {}
    if config_dir is None:
        (_check_mmdit_shapes if family is Family.SD3 else _check_shapes)(path, family, config, keys, shape)
    tokenizers = {
        e.tokenizer_attr: clip_tokenizer(e.pad) for e in family.spec.encoders
        if e.tokenizer_attr not in parts and not (config / e.tokenizer_attr).is_dir()
    }
    cls = _pipeline_class(family)
    from diffusers.loaders.single_file_utils import SingleFileComponentError  # a part whose weights the file lacks

    try:
        pipe = cls.from_single_file(
            str(path), config=str(config), dtype=dtype, local_files_only=True,
            **tokenizers, **parts, **_sd_only_kwargs(family),
        )
    except (OSError, ValueError, RuntimeError, KeyError, SingleFileComponentError) as exc:
        raise TitkError(f"{path}: could not build the pipeline: {_first_line(exc)}") from None
    _keep_vae_safe(pipe, family, dtype)
    if family is Family.SD2 and prediction_type is None and config_dir is None:
        prediction_type = sd2_prediction_type(path, pipe)
        if prediction_type == "v_prediction":
            pipe.unet.register_to_config(sample_size=96)
    if prediction_type is not None:
        pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return pipe


def _check_shapes(path: Path, family: Family, config: Path, keys: set[str], shape) -> None:
    """Compare a few telling shapes with the family's standard architecture before the costly load."""
    unet = json.loads((config / "unet" / "config.json").read_text())
    checks = [(UNET_PREFIX + "input_blocks.0.0.weight", 0, unet["block_out_channels"][0], "UNet width")]
    to_k = next((k for k in sorted(keys) if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if to_k:
        checks.append((to_k, 1, unet["cross_attention_dim"], "cross-attention width"))
    main = family.spec.main_encoder
    if main.openclip_layout:
        te_key = token_table_key(main)
    else:
        te_key = next((k for k in keys if k.endswith("embeddings.token_embedding.weight")), None)
    te_config = main.model_attr
    hidden = json.loads((config / te_config / "config.json").read_text())["hidden_size"]
    checks.append((te_key, 1, hidden, "text-encoder width"))
    for key, dim, expected, what in checks:
        if key in keys and shape(key)[dim] != expected:
            raise UnknownArchitecture(
                f"{path}: {what} is {shape(key)[dim]}, the standard {family.value} architecture has {expected}; "
                "for a non-standard model pass --model-config DIR (a diffusers folder holding its configs)"
            )


def _sd3_encoders(path: Path, keys: set[str], config: Path) -> dict:
    """Which of SD3's encoders the file holds: CLIP-L and CLIP-G it must, T5 it may (SD3 without T5 is legal:
    the pipeline gets none). T5's tokenizer is not in the file and cannot be built offline, so a file with T5
    needs a config folder that has one."""
    found = [e.key for e in Family.SD3.spec.encoders if any(k.startswith(e.checkpoint_prefix) for k in keys)]
    if not {"clip_l", "clip_g"} <= set(found):
        raise TitkError(
            f"{path}: an SD3 single file needs its clip_l and clip_g text encoders; it holds {', '.join(found) or 'none'}. "
            "Use a file that includes them (such as sd3_medium_incl_clips) or the model's diffusers folder"
        )
    if "t5" not in found:
        return {"text_encoder_3": None, "tokenizer_3": None}
    if not (config / "tokenizer_3").is_dir():
        raise TitkError(
            f"{path}: holds a T5 encoder, whose tokenizer titk cannot build offline; pass --model-config DIR "
            "(a diffusers SD3 folder with tokenizer_3/), or use the file without T5"
        )
    return {}


def _check_mmdit_shapes(path: Path, family: Family, config: Path, keys: set[str], shape) -> None:
    """SD3 medium is the shipped architecture; SD3.5 and others differ in width or depth and need their configs."""
    mmdit = json.loads((config / "transformer" / "config.json").read_text())
    prefix = UNET_PREFIX if any(k.startswith(UNET_PREFIX) for k in keys) else ""
    if prefix + "x_embedder.proj.weight" not in keys:
        raise UnknownArchitecture(f"{path}: SD3 text encoders but no complete SD3 transformer (no x_embedder)")
    blocks = 1 + max(int(k[len(prefix):].split(".")[1]) for k in keys if k.startswith(prefix + "joint_blocks."))
    checks = [
        (shape(prefix + "x_embedder.proj.weight")[0], mmdit["num_attention_heads"] * mmdit["attention_head_dim"], "transformer width"),
        (blocks, mmdit["num_layers"], "number of joint blocks"),
        (shape(prefix + "pos_embed")[1] if prefix + "pos_embed" in keys else None, mmdit["pos_embed_max_size"] ** 2, "position table"),
        # SD3.5 medium: SD3 medium's width and depth, but a larger position table, dual attention and q/k norms
        (any(".attn2." in k for k in keys), bool(mmdit.get("dual_attention_layers")), "dual attention"),
        (any(".ln_q." in k for k in keys), mmdit.get("qk_norm") is not None, "q/k normalisation"),
    ]
    for got, expected, what in checks:
        if got == expected:
            continue
        if isinstance(got, bool):  # a part the file has and SD3 medium has not, or the other way round
            differs = f"{'has' if got else 'lacks'} {what}, which SD3 medium (titk's shipped config) {'has' if expected else 'has not'}"
        else:
            differs = f"{what} is {got}, SD3 medium (titk's shipped config) has {expected}"
        raise UnknownArchitecture(
            f"{path}: {differs}; for SD3.5 or another model pass --model-config DIR (a diffusers folder holding its configs)"
        )


def sd2_prediction_type(path: Path, pipe) -> str:
    """eps or v for an SD2 single file: A1111's sidecar YAML if present, else A1111's probe of the UNet."""
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        text = sidecar.read_text(errors="replace")
        match = re.search(r"parameterization:\s*[\"']?(\w+)", text)
        return "v_prediction" if match and match.group(1) == "v" else "epsilon"
    return probe_v_prediction(pipe.unet)


@torch.no_grad()
def probe_v_prediction(unet) -> str:
    """A1111's test: at t=999 an eps model predicts roughly the input, a v model roughly its negative."""
    device, dtype = unet.device, unet.dtype
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=device, dtype=dtype)
    cond_dim = unet.config.cross_attention_dim
    context = torch.zeros((1, CONTEXT_TOKENS, cond_dim), device=device, dtype=dtype)
    out = unet(x, torch.tensor([999], device=device), encoder_hidden_states=context).sample
    return "v_prediction" if (out - x).mean().item() < -1 else "epsilon"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


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
    return _architecture(family, folder)


def shipped_architecture(family: Family) -> Architecture:
    """A family's standard architecture from the config folder titk ships (no model needed)."""
    return _architecture(family, shipped_config(family.spec.configs[0]))


def _architecture(family: Family, folder: Path) -> Architecture:
    unet = json.loads((folder / family.spec.denoiser_attr / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return Architecture(family, unet, 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1))
