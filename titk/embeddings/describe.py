"""What `titk inspect` says about an embedding file."""

from __future__ import annotations

import torch

from ..families import FAMILIES
from .embedding import Embedding
from .formats import EmbeddingFile
from .health import HIGH, RUNAWAY, health, verdict, vocab_median

FORMAT_LABELS = {
    "a1111": "A1111 .pt (string_to_param)",
    "a1111-png": "A1111 image embedding (text chunk / pixels)",
    "kohya": "kohya (emb_params)",
    "onetrainer": "OneTrainer (emp_params)",
    "diffusers": "diffusers ({token: tensor})",
    "diffusers-sdxl-pair": "diffusers SDXL pair (two files)",
    "sdxl": "SDXL single file (clip_l + clip_g)",
    "sd3": "SD3 (clip_l + clip_g + t5)",
    "flux": "Flux (clip_l + t5)",
    "flux-clip-g-mislabelled": "Flux with CLIP-L under clip_g (OneTrainer 2024-08 to 2025-01); read as clip_l",
    "multi-encoder": "several encoders (clip_l + others, no known family)",
    "safetensors": "single-key .safetensors with titk metadata",
}
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 2**20:.2f} MB"


def size_explained(found: EmbeddingFile) -> str:
    size = sum(p.stat().st_size for p in found.files)
    emb = found.embedding
    per = BYTES.get(found.stored_dtype, 4)
    if found.format == "a1111-png":
        return f"{_kb(size)}: a picture carrying the embedding as JSON text and pixels ({emb.n_vectors} vectors)"
    widths = " + ".join(str(w) for w in emb.widths.values())
    numbers = emb.n_vectors * sum(emb.widths.values()) * per
    numbers += sum(t.numel() for t in emb.output_vectors.values()) * per
    return (
        f"{_kb(size)}: {emb.n_vectors} vectors × {widths} × {per} bytes ({found.stored_dtype}) = {_kb(numbers)} of numbers, "
        f"{_kb(max(size - numbers, 0))} of container"
    )


def describe(found: EmbeddingFile, bundle=None) -> dict[str, dict[str, str]]:
    emb = found.embedding
    meta = {k: v for k, v in found.metadata.items() if k not in ("name", "step", "sd_checkpoint", "sd_checkpoint_name", "family")}
    main = {
        "file": ", ".join(str(p) for p in found.files),
        "format": FORMAT_LABELS.get(found.format, found.format),
        "family (from widths)": FAMILIES[emb.family].label if emb.family in FAMILIES else f"unknown ({', '.join(map(str, emb.widths.values()))})",
        "vectors × width": ", ".join(f"{k}: {emb.n_vectors} × {w}" for k, w in emb.widths.items()),
        "size": size_explained(found),
        "trigger word in A1111": found.token,
        "stored name": emb.name,
        "step": str(emb.step),
        "base model": f"{emb.base_model_name or '-'} [{emb.base_model_hash or 'no hash'}]",
    }
    if emb.output_vectors:
        main["output vectors"] = ", ".join(f"{k}: {t.shape[0]} × {t.shape[1]}" for k, t in emb.output_vectors.items())
    if meta:
        main["metadata"] = "; ".join(f"{k}={v}" for k, v in sorted(meta.items()))
    sections = {"embedding": main}
    if bundle is None:
        # A norm means something only beside the vocabulary's; no real CLIP table ships with titk to measure
        # the families' medians from honestly, so without a model nothing is judged.
        main["norm health"] = (
            f"not judged: no model to compare with; pass --model to compare each vector with that model's "
            f"vocabulary median norm (high from {HIGH:g}×, runaway from {RUNAWAY:g}×)"
        )
        for key, tensor in emb.vectors.items():
            sections[f"{key} vector norms"] = {f"#{i}": f"{float(n):.4f}" for i, n in enumerate(tensor.norm(dim=1))}
        return sections
    from ..errors import TitkError
    from .fit import vectors_for

    try:
        fitted = vectors_for(emb, bundle, str(found.path))
        main["fits model"] = f"yes: {bundle.name} ({', '.join(f'{e.key} {e.width}' for e in bundle.encoders)})"
    except TitkError as exc:
        main["fits model"] = f"no: {str(exc).split(': ', 1)[1]}"
        return sections
    ratios, medians = {}, {}
    for enc in bundle.encoders:
        tensor, table = fitted[enc.key], enc.table.float()
        median = medians[enc.key] = vocab_median(table)
        rows = {}
        ratios[enc.key] = [float(v.norm()) / median for v in tensor]
        for i, vector in enumerate(tensor):
            near = nearest_tokens(vector, table, enc.tokenizer)
            level = health(ratios[enc.key][i])
            flag = "" if level == "ok" else f", {level}"
            rows[f"#{i}"] = f"norm {float(vector.norm()):.4f} ({ratios[enc.key][i]:.1f}× the vocabulary median {median:.4f}{flag}); nearest: {near}"
        sections[f"{enc.key} vectors"] = rows
    main["norm health"] = verdict(ratios, medians)
    return sections


def nearest_tokens(vector: torch.Tensor, table: torch.Tensor, tokenizer, k: int = 3) -> str:
    sims = torch.nn.functional.cosine_similarity(table, vector.to(table.device, table.dtype)[None], dim=1)
    top = sims.topk(k)
    words = tokenizer.convert_ids_to_tokens(top.indices.tolist())
    return ", ".join(f"{w.replace('</w>', '')} ({float(s):.2f})" for w, s in zip(words, top.values))


def summary(emb: Embedding) -> str:
    return f"{emb.name}: {emb.n_vectors} vectors, {', '.join(f'{k} {w}' for k, w in emb.widths.items())}, step {emb.step}"
