"""Embedding files: every layout people exchange, read into the one Embedding value and written exactly.

Read (the layout is recognised from the content, not the file name):
    A1111 `.pt`/`.bin`: `string_to_param` with one entry (also the old pickled ParameterDict form)
    A1111 `.png`/`.webp`: the `sd-ti-embedding` text chunk, or the pixel copy
    kohya: `emb_params` (SD1/SD2); OneTrainer: `emp_params` (+ `emp_params_out`)
    diffusers: `{token: tensor}` (.bin/.safetensors), and its SDXL pair `<stem>` + `<stem>_2`
    SDXL single file: `clip_l` + `clip_g`; SD3: `clip_l` + `clip_g` + `t5`; Flux: `clip_l` + `t5` (each may
    have `_out` twins); T5 also as ComfyUI's `t5xxl`; OneTrainer's 2024-08 to 2025-01 Flux files, which hold the
    CLIP-L vectors under `clip_g`, are read as what they are
Pickles are opened with `torch.load(weights_only=True)` only: one that needs code to load is refused.

Write: `a1111`, `safetensors`, `kohya`, `diffusers`, `onetrainer`, `png` (see `write_embedding`). Every
write is atomic: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import TitkError, first_line
from ..families import ENCODER_KEYS, FAMILIES, KEY_ALIASES
from ..files import atomic_path
from .embedding import Embedding

A1111_TOKEN = 265  # the constant `string_to_token` value A1111 writes; it means nothing
PICKLE_SUFFIXES = {".pt", ".bin", ".pth", ".ckpt"}
IMAGE_SUFFIXES = {".png", ".webp", ".jxl", ".avif"}
WRITE_FORMATS = ("a1111", "safetensors", "kohya", "diffusers", "onetrainer", "png")
# Every key an embedding file of several keys may hold (a one-key file may use any key: diffusers' token).
EMBEDDING_KEYS = {k + out for k in (*ENCODER_KEYS, *KEY_ALIASES, "emb_params", "emp_params") for out in ("", "_out")}
# kohya's sai_model_spec names for the code a family's file was made for (SD1/SD2: "diffusers").
MODELSPEC_IMPLEMENTATION = {"sdxl": "https://github.com/Stability-AI/generative-models",
                            "sd3": "https://github.com/Stability-AI/generative-models", "flux": "https://github.com/black-forest-labs/flux"}
MULTI_ENCODER = {frozenset(spec.encoder_keys): name for name, spec in FAMILIES.items() if len(spec.encoders) > 1}


@dataclass
class EmbeddingFile:
    """An embedding as read from disk, with what the file itself says about it."""

    embedding: Embedding
    format: str  # a1111, a1111-png, kohya, onetrainer, diffusers, diffusers-sdxl-pair, sdxl, sd3, flux, flux-clip-g-mislabelled, safetensors
    path: Path
    token: str  # the word A1111 (file stem, or the stored name for images) would use
    stored_dtype: str = "float32"
    metadata: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


# ================================================================================================ reading


def read_embedding(path: str | Path) -> Embedding:
    return read_embedding_file(path).embedding


def read_embedding_file(path: str | Path) -> EmbeddingFile:
    path = Path(path)
    if not path.is_file():
        raise TitkError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise TitkError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _read_image(path)
    if suffix == ".safetensors":
        state, metadata = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state, metadata = _load_pickle(path), {}
    else:
        raise TitkError(f"{path}: not an embedding file type titk reads ({', '.join(sorted(PICKLE_SUFFIXES | IMAGE_SUFFIXES | {'.safetensors'}))})")
    try:
        return _classify(state, path, metadata)
    except TitkError as exc:  # the Embedding's own checks know its name, not the file it came from
        raise exc if str(path) in str(exc) else TitkError(f"{path}: {exc}") from None


def _load_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error type for any malformed file
        raise TitkError(f"{path}: not a readable .safetensors file ({first_line(exc, 200)}); it may be truncated") from None


def _load_pickle(path: Path):
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "ParameterDict" not in str(exc):
                raise
            # Old A1111 files pickled string_to_param as an nn.ParameterDict: allow exactly that class.
            with torch.serialization.safe_globals([torch.nn.ParameterDict]):
                return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it calls {match.group(1)}" if match else "it holds objects other than tensors"
        raise TitkError(
            f"{path}: refused: this pickle needs code to run when loaded ({what}); titk never runs such files"
        ) from None
    except Exception as exc:  # a damaged pickle fails in many ways (EOFError, struct.error, RuntimeError ...)
        raise TitkError(f"{path}: not a readable embedding ({first_line(exc, 200)}); it may be truncated") from None


def _read_image(path: Path) -> EmbeddingFile:
    from PIL import Image, UnidentifiedImageError

    from .png import read_image_embedding

    try:
        with warnings.catch_warnings():
            # PIL only warns below twice its pixel limit; a picture that large is no embedding card either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                data = read_image_embedding(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TitkError(f"{path}: refused: the image is too large to decode safely (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise TitkError(f"{path}: not a readable image ({first_line(exc, 200)})") from None
    except ValueError as exc:
        raise TitkError(f"{path}: its embedding chunk is damaged ({first_line(exc, 200)})") from None
    if data is None:
        raise TitkError(f"{path}: an image without an embedding (no sd-ti-embedding chunk and no pixel copy)")
    found = _classify(data, path, {})
    found.format = "a1111-png"
    found.token = str(data.get("name") or path.stem)  # A1111 names image embeddings by their stored name
    return found


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _vectors(path: Path, key: str, value) -> torch.Tensor:
    """An embedding tensor as found in a file, refused unless it can be one: converting an integer mask,
    an empty tensor or NaNs to float32 would make a file that loads and then spoils every prompt it is in."""
    if not isinstance(value, torch.Tensor):
        raise TitkError(f"{path}: {key} holds a {type(value).__name__}, not a tensor of vectors")
    if not value.is_floating_point():
        raise TitkError(f"{path}: {key} is a {_dtype(value)} tensor; embedding vectors are floating point")
    if value.ndim not in (1, 2) or value.numel() == 0:
        raise TitkError(f"{path}: {key} has shape {tuple(value.shape)}; expected [vectors, width] with at least one vector")
    if not math.isfinite(float(value.detach().float().abs().sum())):
        raise TitkError(f"{path}: {key} holds NaN or infinite values; the training that wrote it diverged")
    return value


def _classify(state, path: Path, metadata: dict) -> EmbeddingFile:
    if not isinstance(state, dict):
        raise TitkError(f"{path}: not an embedding (the file holds a {type(state).__name__}, not a dict of tensors)")
    meta = {k: str(v) for k, v in metadata.items()}
    common = dict(step=_int(meta.get("step")), base_model_hash=meta.get("sd_checkpoint"), base_model_name=meta.get("sd_checkpoint_name"))
    stem = path.stem

    if "string_to_param" in state:
        params = state["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            n = len(params) if isinstance(params, dict) else 0
            raise TitkError(f"{path}: an A1111 embedding must hold exactly one term; this one has {n}")
        tensor = _vectors(path, "string_to_param", next(iter(params.values())))
        emb = Embedding.from_single(
            str(state.get("name") or stem), tensor, step=_int(state.get("step")),
            base_model_hash=state.get("sd_checkpoint"), base_model_name=state.get("sd_checkpoint_name"),
        )
        return EmbeddingFile(emb, "a1111", path, stem, _dtype(tensor), meta, [path])

    tensors = _tensors(state)
    if not tensors:
        raise TitkError(f"{path}: not an embedding (no tensors in it)")
    tensors = _unaliased(path, {k: _vectors(path, k, v) for k, v in tensors.items()})
    outputs = {k.removesuffix("_out"): v for k, v in tensors.items() if k.endswith("_out")}
    inputs = {k: v for k, v in tensors.items() if not k.endswith("_out")}
    stored = state.get("name")
    name = meta.get("name") or (stored if isinstance(stored, str) and stored else stem)
    keys = set(inputs)
    fmt = None
    if keys == {"clip_g", "t5"} and inputs["clip_g"].shape[-1] == 768:
        # OneTrainer saved Flux's CLIP-L vectors under clip_g from 2024-08-22 to 2025-01-05 (OneTrainer#514).
        fmt = "flux-clip-g-mislabelled"
        inputs["clip_l"] = inputs.pop("clip_g")
        outputs = {("clip_l" if k == "clip_g" else k): v for k, v in outputs.items()}
        keys = set(inputs)
    if "clip_l" in keys and keys & {"clip_g", "t5"}:
        wanted = [k for k in ENCODER_KEYS if k in keys]
        fmt = fmt or MULTI_ENCODER.get(frozenset(wanted), "multi-encoder")
        extra = keys - set(wanted)
        if extra:
            raise TitkError(f"{path}: an {fmt.upper()} embedding with unexpected extra keys {sorted(extra)}")
        emb = Embedding(name, {k: inputs[k] for k in wanted}, output_vectors={k: outputs[k] for k in outputs}, **common)
        return EmbeddingFile(emb, fmt, path, stem, _dtype(inputs["clip_l"]), meta, [path])
    if "emp_params" in keys and len(keys) == 1:
        out = {"*": outputs["emp_params"]} if "emp_params" in outputs else {}
        emb = Embedding.from_single(name, inputs["emp_params"], output_vectors=out, **common)
        return EmbeddingFile(emb, "onetrainer", path, stem, _dtype(inputs["emp_params"]), meta, [path])
    if "emb_params" in keys and len(keys) == 1 and not outputs:
        emb = Embedding.from_single(name, inputs["emb_params"], **common)
        return EmbeddingFile(emb, "kohya", path, stem, _dtype(inputs["emb_params"]), meta, [path])
    if len(tensors) == 1:
        (token, tensor), = tensors.items()
        pair = _diffusers_pair(path)
        if pair is not None and tensor.shape[-1] == 768:
            second, _ = _load_safetensors(pair) if pair.suffix == ".safetensors" else (_load_pickle(pair), {})
            second_tensors = _tensors(second) if isinstance(second, dict) else {}
            if len(second_tensors) == 1 and next(iter(second_tensors.values())).shape[-1] == 1280:
                emb = Embedding(token, {"clip_l": tensor, "clip_g": next(iter(second_tensors.values()))}, **common)
                return EmbeddingFile(emb, "diffusers-sdxl-pair", path, stem, _dtype(tensor), meta, [path, pair])
        fmt = "safetensors" if meta.get("name") else "diffusers"
        emb = Embedding.from_single(meta.get("name") or token, tensor, **common)
        return EmbeddingFile(emb, fmt, path, stem, _dtype(tensor), meta, [path])
    raise TitkError(
        f"{path}: not an embedding layout titk knows (keys: {', '.join(sorted(tensors)[:6])}); "
        "expected string_to_param, emb_params, emp_params, clip_l/clip_g, or one token"
    )


def _unaliased(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors under titk's keys: `t5xxl` (ComfyUI) becomes `t5`; a file holding both must hold the same vectors."""
    out, found_as = {}, {}
    for key, tensor in tensors.items():
        base, out_suffix = (key[:-4], "_out") if key.endswith("_out") else (key, "")
        name = KEY_ALIASES.get(base, base) + out_suffix
        if name in out and not torch.equal(out[name], tensor):
            first, second = sorted((found_as[name], key))
            raise TitkError(f"{path}: {first} and {second} hold different vectors; a file must give T5 one embedding")
        out[name], found_as[name] = tensor, key
    return out


def _diffusers_pair(path: Path) -> Path | None:
    candidate = path.with_name(f"{path.stem}_2{path.suffix}")
    return candidate if candidate.is_file() else None


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


# ================================================================================================ writing


def a1111_dict(emb: Embedding) -> dict:
    """A1111's `Embedding.save` dict (tensor detached, CPU, float32); multi-encoder embeddings as a key dict."""
    if len(emb.vectors) > 1:
        return _with_aliases({k: v.clone() for k, v in emb.vectors.items()})
    return {
        "string_to_token": {"*": A1111_TOKEN},
        "string_to_param": {"*": emb.single.clone()},
        "name": emb.name,
        "step": int(emb.step),
        "sd_checkpoint": emb.base_model_hash,
        "sd_checkpoint_name": emb.base_model_name,
    }


def _metadata(emb: Embedding) -> dict[str, str]:
    meta = {"name": emb.name, "step": str(emb.step), "format": "pt"}
    if emb.base_model_hash:
        meta["sd_checkpoint"] = emb.base_model_hash
    if emb.base_model_name:
        meta["sd_checkpoint_name"] = emb.base_model_name
    if emb.family:
        meta["family"] = emb.family
    meta.update(emb.extra)
    return meta


def _keyed(emb: Embedding, single_key: str, with_outputs: bool = False, aliases: bool = True) -> dict[str, torch.Tensor]:
    """The file's tensors; several encoders under their keys, T5's also under `t5xxl` (`aliases`) so that both
    ComfyUI and OneTrainer find it."""
    if len(emb.vectors) == 1:
        out = {single_key: emb.single.clone()}
        if with_outputs and emb.output_vectors:
            out[f"{single_key}_out"] = next(iter(emb.output_vectors.values())).clone()
        return out
    out = {k: v.clone() for k, v in emb.vectors.items()}
    if with_outputs:
        out.update({f"{k}_out": v.clone() for k, v in emb.output_vectors.items()})
    return _with_aliases(out) if aliases else out


def _with_aliases(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    aliased = {alias: name for alias, name in KEY_ALIASES.items() if name in tensors}
    return {**tensors, **{alias: tensors[name].clone() for alias, name in aliased.items()}}


def _save(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        else:
            torch.save(tensors, tmp)
    return path


def write_a1111(emb: Embedding, path: Path) -> list[Path]:
    with atomic_path(path) as tmp:
        torch.save(a1111_dict(emb), tmp)
    return [path]


def write_safetensors(emb: Embedding, path: Path) -> list[Path]:
    """One key, the name (diffusers' convention; A1111, ComfyUI and kohya take the single tensor), with
    name, step and base model in the file's metadata, never as extra keys. SDXL/SD3/Flux: clip_l, clip_g, t5 as
    the family has them, T5 also as `t5xxl`."""
    return [_save(_keyed(emb, emb.name), path, _metadata(emb))]


def write_kohya(emb: Embedding, path: Path) -> list[Path]:
    """kohya's `save_weights`: `{"emb_params": T}` (SDXL: clip_l, clip_g); .safetensors with sai-modelspec metadata
    (and any `modelspec.*` entries of `emb.extra`, such as the training resolution)."""
    metadata = None
    if path.suffix.lower() == ".safetensors":
        spec = FAMILIES.get(emb.family or "")
        arch = spec.kohya_arch if spec and spec.kohya_arch else FAMILIES["sd1"].kohya_arch
        metadata = {
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{arch}/textual-inversion",
            "modelspec.implementation": MODELSPEC_IMPLEMENTATION.get(emb.family or "", "diffusers"), "modelspec.title": emb.name,
            **{k: v for k, v in emb.extra.items() if k.startswith("modelspec.")},
        }
    return [_save(_keyed(emb, "emb_params"), path, metadata)]


def write_diffusers(emb: Embedding, path: Path) -> list[Path]:
    """`{token: T}`, metadata `{"format": "pt"}`; SDXL as diffusers' two files `<stem>` (CLIP-L) and `<stem>_2` (CLIP-G)."""
    metadata = {"format": "pt"} if path.suffix.lower() == ".safetensors" else None
    if len(emb.vectors) == 1:
        return [_save({emb.name: emb.single.clone()}, path, metadata)]
    if set(emb.vectors) != {"clip_l", "clip_g"}:
        raise TitkError(f"{path}: diffusers has no file layout for a {emb.family or 'multi-encoder'} embedding; use safetensors or onetrainer")
    second = path.with_name(f"{path.stem}_2{path.suffix}")
    return [_save({emb.name: emb.vectors["clip_l"].clone()}, path, metadata), _save({emb.name: emb.vectors["clip_g"].clone()}, second, metadata)]


def write_onetrainer(emb: Embedding, path: Path) -> list[Path]:
    """OneTrainer's saver: `emp_params` (sic) for SD1/SD2, clip_l/clip_g/t5 otherwise, `_out` twins, no metadata."""
    if path.suffix.lower() != ".safetensors":
        raise TitkError(f"{path}: OneTrainer embeddings are .safetensors files")
    return [_save(_keyed(emb, "emp_params", with_outputs=True, aliases=False), path, None)]


def write_png(emb: Embedding, path: Path, picture=None) -> list[Path]:
    """A1111's image embedding: a picture (a plain card by default) carrying the embedding in a text chunk and in pixels."""
    from .png import save_image_embedding

    if picture is None:
        picture = embedding_card(emb)
    data = a1111_dict(emb)
    if len(emb.vectors) > 1:
        data = {**data, "name": emb.name, "step": int(emb.step)}
    with atomic_path(path) as tmp:
        save_image_embedding(picture, data, tmp)
    return [path]


def embedding_card(emb: Embedding, size: int = 512):
    """A plain picture naming the embedding, as A1111's preview captions do: title, vectors and steps, base model."""
    from PIL import Image, ImageDraw

    from ..drawing import font

    img = Image.new("RGB", (size, size), (40, 44, 52))
    draw = ImageDraw.Draw(img)
    draw.text((16, 16), emb.name, fill="white", font=font(40))
    footer = f"{emb.n_vectors}v {emb.step}s" + (f"  {emb.base_model_name} [{emb.base_model_hash}]" if emb.base_model_hash else "")
    draw.text((16, size - 32), footer, fill=(220, 220, 220), font=font(16))
    return img


WRITERS = {
    "a1111": write_a1111, "safetensors": write_safetensors, "kohya": write_kohya, "diffusers": write_diffusers,
    "onetrainer": write_onetrainer, "png": write_png,
}
DEFAULT_SUFFIX = {"a1111": ".pt", "safetensors": ".safetensors", "kohya": ".safetensors", "diffusers": ".safetensors", "onetrainer": ".safetensors", "png": ".png"}
FORMAT_BY_SUFFIX = {".pt": "a1111", ".bin": "a1111", ".safetensors": "safetensors", ".png": "png"}


def write_embedding(emb: Embedding, path: str | Path, fmt: str | None = None) -> list[Path]:
    """Write `emb` to `path` in `fmt` (default: from the suffix); return the files written."""
    path = Path(path)
    fmt = fmt or FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt not in WRITERS:
        raise TitkError(f"{path}: unknown embedding format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    return WRITERS[fmt](emb, path)


def save_embedding(emb: Embedding, path: str | Path, layout: str = "a1111") -> Path:
    """The training outputs. Layout `a1111`: `.pt` as A1111, `.safetensors` as single-key safetensors;
    `kohya`: both as kohya's `save_weights` writes them (`emb_params`, or clip_l/clip_g)."""
    path = Path(path)
    kohya = layout == "kohya" and path.suffix.lower() in (".pt", ".safetensors")
    return write_embedding(emb, path, "kohya" if kohya else None)[0]
