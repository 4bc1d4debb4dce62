"""Single-file checkpoints: reading their keys (safetensors, or a pickle through `torch.load(weights_only=True)`
only), recognising what they are, checking their shapes against the config folder they load with, and building
the pipeline through diffusers' own converters. Every family but Flux loads with titk's shipped configs by
default; a FLUX.1 file holds its transformer alone and takes the rest from the diffusers folder given.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from ..config import CONTEXT_TOKENS
from ..errors import TitkError, UnknownArchitecture, first_line
from .families import UNET_PREFIX, Family, block_count, denoiser_prefix, detect_checkpoint, detect_folder, token_table_key
from .pipelines import keep_vae_safe, pipeline_class, sd_only_kwargs, shipped_config
from .tokenizer import clip_tokenizer

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


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
                f"{path}: not a readable .safetensors file ({first_line(exc)}); it may be truncated or incomplete"
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
        raise TitkError(f"{path}: not a readable checkpoint ({first_line(exc)}); it may be truncated") from None
    while isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TitkError(f"{path}: not a checkpoint state dict")
    return obj


def _unsafe_reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return f"it calls {match.group(1)}" if match else "it holds objects other than tensors"


def load_single_file(path: Path, dtype: torch.dtype, config_dir, prediction_type: str | None):
    keys, shape = read_checkpoint_index(path)
    family = detect_checkpoint(path, keys, shape)
    if config_dir is not None:
        config = Path(config_dir)
        if not (config / "model_index.json").is_file():
            raise TitkError(f"{config}: not a diffusers config folder (no model_index.json)")
    if family is Family.FLUX:
        return _load_flux_file(path, dtype, config_dir, keys, shape)
    if config_dir is None:
        config = shipped_config(family.spec.configs[0])
    parts = _sd3_encoders(path, keys, config) if family is Family.SD3 else {}
    if config_dir is None:
        (_check_mmdit_shapes if family is Family.SD3 else _check_shapes)(path, family, config, keys, shape)
    tokenizers = {
        e.tokenizer_attr: clip_tokenizer(e.pad) for e in family.spec.encoders
        if e.tokenizer_attr not in parts and not (config / e.tokenizer_attr).is_dir()
    }
    cls = pipeline_class(family)
    from diffusers.loaders.single_file_utils import SingleFileComponentError  # a part whose weights the file lacks

    try:
        pipe = cls.from_single_file(
            str(path), config=str(config), dtype=dtype, local_files_only=True,
            **tokenizers, **parts, **sd_only_kwargs(family),
        )
    except (OSError, ValueError, RuntimeError, KeyError, SingleFileComponentError) as exc:
        raise TitkError(f"{path}: could not build the pipeline: {first_line(exc)}") from None
    keep_vae_safe(pipe, family, dtype)
    if family is Family.SD2 and prediction_type is None and config_dir is None:
        prediction_type = sd2_prediction_type(path, pipe)
        if prediction_type == "v_prediction":
            pipe.unet.register_to_config(sample_size=96)
    if prediction_type is not None:
        pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return pipe


FLUX_WIDTH = 3072  # FLUX.1's transformer width, which diffusers' converter of its single files assumes


def _load_flux_file(path: Path, dtype: torch.dtype, config_dir, keys: set[str], shape):
    """A FLUX.1 transformer in Black Forest Labs' layout (`flux1-dev.safetensors` and its fine-tunes), with
    the text encoders, tokenizers and VAE of the diffusers FLUX.1 folder `config_dir`: such files hold the
    transformer alone, and T5's tokenizer cannot be built offline."""
    if config_dir is None:
        raise TitkError(
            f"{path}: a Flux single file holds the transformer only; pass --model-config DIR, the diffusers "
            "FLUX.1 folder (dev or schnell, as the file) whose text encoders, tokenizers and VAE go with it"
        )
    config = Path(config_dir)
    if detect_folder(config) is not Family.FLUX:
        raise TitkError(f"{config}: not a diffusers FLUX.1 folder (its model_index.json names another pipeline)")
    _check_flux_shapes(path, config, keys, shape)
    from diffusers import FluxPipeline, FluxTransformer2DModel

    try:
        transformer = FluxTransformer2DModel.from_single_file(
            str(path), config=str(config), subfolder="transformer", dtype=dtype, local_files_only=True
        )
        pipe = FluxPipeline.from_pretrained(config, transformer=transformer, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise TitkError(f"{path}: could not build the pipeline with {config}: {first_line(exc)}") from None
    return pipe


def _check_flux_shapes(path: Path, config: Path, keys: set[str], shape) -> None:
    """The file's transformer against the folder's config, before the costly load: a mismatch would fail deep
    inside diffusers (or load a schnell file into dev's guidance embedding)."""
    try:
        transformer = json.loads((config / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        raise TitkError(
            f"{config}: no readable transformer/config.json; pass a complete diffusers FLUX.1 folder (its transformer "
            "weights are not needed)"
        ) from None
    prefix = denoiser_prefix(keys)
    width, channels = shape(prefix + "img_in.weight")
    if width != FLUX_WIDTH:
        raise UnknownArchitecture(
            f"{path}: a Flux transformer {width} wide; titk loads FLUX.1's ({FLUX_WIDTH}) from single files: load the "
            "model's diffusers folder instead"
        )
    if channels != transformer["in_channels"]:
        raise UnknownArchitecture(
            f"{path}: its transformer reads {channels} input channels, {config}'s {transformer['in_channels']} "
            "(Fill and Depth models add image channels); titk trains text-to-image FLUX.1 models"
        )
    guided = prefix + "guidance_in.in_layer.weight" in keys
    if guided != bool(transformer.get("guidance_embeds")):
        which = ("has a guidance embedding (FLUX.1 dev's layout)" if guided else
                 "has no guidance embedding (FLUX.1 schnell's layout, or a de-distilled dev)")
        raise UnknownArchitecture(
            f"{path}: the file {which} and {config}'s transformer {'lacks' if guided else 'has'} one; "
            f"pass FLUX.1 {'dev' if guided else 'schnell'}'s folder"
        )
    for got, expected, what in [
        (block_count(keys, prefix, "double_blocks"), transformer["num_layers"], "double-stream blocks"),
        (block_count(keys, prefix, "single_blocks"), transformer["num_single_layers"], "single-stream blocks"),
        (width, transformer["num_attention_heads"] * transformer["attention_head_dim"], "width"),
    ]:
        if got != expected:
            raise UnknownArchitecture(
                f"{path}: the file has {got} {what}, {config}'s transformer {expected}; pass the FLUX.1 folder the file "
                "was made from"
            )


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
    prefix = denoiser_prefix(keys)
    if prefix + "x_embedder.proj.weight" not in keys:
        raise UnknownArchitecture(f"{path}: SD3 text encoders but no complete SD3 transformer (no x_embedder)")
    blocks = block_count(keys, prefix, "joint_blocks")
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
