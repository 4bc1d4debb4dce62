"""diffusers → original LDM key layout, for writing single-file checkpoints.

diffusers converts LDM checkpoints to its own layout but not back. titk writes its fixtures (and any
pipeline a user wants as one file) in the layout A1111, ComfyUI and kohya load: `model.diffusion_model.*`
for the UNet, `first_stage_model.*` for the VAE, the HF CLIP layout under
`cond_stage_model.transformer.text_model.*` (SD1) or `conditioner.embedders.0.transformer.text_model.*`
(SDXL's CLIP-L), and the OpenCLIP layout under `cond_stage_model.model.*` (SD2) or
`conditioner.embedders.1.model.*` (SDXL's CLIP-G); SD3 in Stability's layout (`joint_blocks`, q/k/v fused, the
text encoders in Hugging Face's layout under `text_encoders.*`); FLUX.1's transformer in Black Forest Labs'
layout (`double_blocks`, `single_blocks`, q/k/v fused), the transformer alone, as they ship it.
"""

from __future__ import annotations

import torch

from .families import UNET_PREFIX, family_of_pipeline

VAE_PREFIX = "first_stage_model."

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _unet_prefix_map(config) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers block prefix → (LDM prefix, renames inside that block)."""
    lpb = config.layers_per_block
    if not isinstance(lpb, int):
        raise ValueError("per-block layers_per_block lists are not supported by the LDM writer")
    mapping: dict[str, tuple[str, dict[str, str]]] = {}
    for i in range(len(config.down_block_types)):
        for j in range(lpb):
            ldm = 1 + i * (lpb + 1) + j
            mapping[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{ldm}.0.", _UNET_RESNET)
            mapping[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{ldm}.1.", {})
        mapping[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", {})
    mapping["mid_block.resnets.0."] = ("middle_block.0.", _UNET_RESNET)
    mapping["mid_block.attentions.0."] = ("middle_block.1.", {})
    mapping["mid_block.resnets.1."] = ("middle_block.2.", _UNET_RESNET)
    for i, block_type in enumerate(config.up_block_types):
        for j in range(lpb + 1):
            ldm = i * (lpb + 1) + j
            mapping[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{ldm}.0.", _UNET_RESNET)
            mapping[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{ldm}.1.", {})
        slot = 2 if "CrossAttn" in block_type else 1
        mapping[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.", {})
    return mapping


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    blocks = _unet_prefix_map(config)
    out = {}
    for key, value in state_dict.items():
        new = None
        for old, ldm in _UNET_TOP.items():
            if key.startswith(old):
                new = ldm + key[len(old) :]
                break
        if new is None:
            for old, (ldm, renames) in blocks.items():
                if key.startswith(old):
                    new = ldm + _rename(key[len(old) :], renames)
                    break
        if new is None:
            raise ValueError(f"no LDM name for UNet key {key!r}")
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], n_blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        new = key
        if part in ("encoder", "decoder"):
            if rest.startswith("conv_norm_out."):
                new = f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"
            elif rest.startswith("mid_block.resnets."):
                idx, _, tail = rest[len("mid_block.resnets.") :].partition(".")
                new = f"{part}.mid.block_{int(idx) + 1}.{_rename(tail, _VAE_RESNET)}"
            elif rest.startswith("mid_block.attentions.0."):
                tail = _rename(rest[len("mid_block.attentions.0.") :], _VAE_ATTENTION)
                new = f"{part}.mid.attn_1.{tail}"
                if value.ndim == 2:  # LDM stores the attention projections as 1×1 convolutions
                    value = value[:, :, None, None]
            elif rest.startswith(("down_blocks.", "up_blocks.")):
                kind, idx, tail = rest.split(".", 2)
                i = int(idx)
                ldm_i = i if kind == "down_blocks" else n_blocks - 1 - i
                stage = "down" if kind == "down_blocks" else "up"
                if tail.startswith("resnets."):
                    _, j, inner = tail.split(".", 2)
                    new = f"{part}.{stage}.{ldm_i}.block.{j}.{_rename(inner, _VAE_RESNET)}"
                elif tail.startswith(("downsamplers.0.", "upsamplers.0.")):
                    sampler = "downsample" if stage == "down" else "upsample"
                    new = f"{part}.{stage}.{ldm_i}.{sampler}.{tail.split('.', 2)[2]}"
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text layout (with or without the `text_model.` level) under an LDM prefix."""
    return {prefix + key.removeprefix("text_model."): value for key, value in state_dict.items()}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text weights in OpenCLIP's layout: fused q/k/v, `resblocks`, transposed projection."""
    sd = {key.removeprefix("text_model."): value for key, value in state_dict.items()}
    out = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            out[f"{dst}attn.out_proj.{kind}"] = sd.pop(f"{src}self_attn.out_proj.{kind}")
            out[f"{dst}ln_1.{kind}"] = sd.pop(f"{src}layer_norm1.{kind}")
            out[f"{dst}ln_2.{kind}"] = sd.pop(f"{src}layer_norm2.{kind}")
            out[f"{dst}mlp.c_fc.{kind}"] = sd.pop(f"{src}mlp.fc1.{kind}")
            out[f"{dst}mlp.c_proj.{kind}"] = sd.pop(f"{src}mlp.fc2.{kind}")
    if sd:
        raise ValueError(f"no OpenCLIP name for text-encoder keys {sorted(sd)[:3]}")
    return out


_MMDIT_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "context_embedder.": "context_embedder.",
    "proj_out.": "final_layer.linear.",
    "norm_out.linear.": "final_layer.adaLN_modulation.1.",
}
_MMDIT_BLOCK = {  # diffusers' name in transformer_blocks.i → SD3's in joint_blocks.i
    "attn.to_out.0.": "x_block.attn.proj.", "attn.to_add_out.": "context_block.attn.proj.",
    "attn.norm_q.": "x_block.attn.ln_q.", "attn.norm_k.": "x_block.attn.ln_k.",
    "attn.norm_added_q.": "context_block.attn.ln_q.", "attn.norm_added_k.": "context_block.attn.ln_k.",
    "attn2.to_out.0.": "x_block.attn2.proj.", "attn2.norm_q.": "x_block.attn2.ln_q.", "attn2.norm_k.": "x_block.attn2.ln_k.",
    "norm1.linear.": "x_block.adaLN_modulation.1.", "norm1_context.linear.": "context_block.adaLN_modulation.1.",
    "ff.net.0.proj.": "x_block.mlp.fc1.", "ff.net.2.": "x_block.mlp.fc2.",
    "ff_context.net.0.proj.": "context_block.mlp.fc1.", "ff_context.net.2.": "context_block.mlp.fc2.",
}
_MMDIT_QKV = {  # SD3 fuses q, k and v into one projection
    ("attn.to_q.", "attn.to_k.", "attn.to_v."): "x_block.attn.qkv.",
    ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj."): "context_block.attn.qkv.",
    ("attn2.to_q.", "attn2.to_k.", "attn2.to_v."): "x_block.attn2.qkv.",
}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    # SD3's and Flux's final modulations are (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift)
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def mmdit_to_original(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """SD3's MMDiT in the layout of Stability's single files (`model.diffusion_model.joint_blocks.*`): q, k
    and v fused, and the modulations that diffusers reorders put back."""
    sd, out, last = dict(state_dict), {}, config.num_layers - 1
    for i in range(config.num_layers):
        src, dst = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for parts, theirs in _MMDIT_QKV.items():
            for kind in ("weight", "bias"):
                if f"{src}{parts[0]}{kind}" in sd:
                    out[f"{dst}{theirs}{kind}"] = torch.cat([sd.pop(f"{src}{part}{kind}") for part in parts], dim=0)
        for key in [k for k in sd if k.startswith(src)]:
            rest = key[len(src):]
            prefix = next(p for p in _MMDIT_BLOCK if rest.startswith(p))
            value = sd.pop(key)
            if i == last and prefix == "norm1_context.linear.":
                value = _swap_halves(value)
            out[dst + _MMDIT_BLOCK[prefix] + rest[len(prefix):]] = value
    for key in list(sd):
        prefix = next(p for p in _MMDIT_TOP if key.startswith(p))
        value = sd.pop(key)
        out[_MMDIT_TOP[prefix] + key[len(prefix):]] = _swap_halves(value) if prefix == "norm_out.linear." else value
    return {UNET_PREFIX + k: v for k, v in out.items()}


def sd3_to_original(pipe) -> dict[str, torch.Tensor]:
    """An SD3 pipeline as one of Stability's single files: the MMDiT, the VAE and each text encoder present
    under `text_encoders.<clip_l|clip_g|t5xxl>.transformer.` in Hugging Face's layout."""
    sd = mmdit_to_original(pipe.transformer.state_dict(), pipe.transformer.config)
    sd.update(vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)))
    for enc in family_of_pipeline(pipe).spec.encoders:
        model = getattr(pipe, enc.model_attr, None)
        if model is not None:
            root = enc.checkpoint_prefix.removesuffix("text_model.")
            sd.update({root + key: value.clone() for key, value in model.state_dict().items()})  # T5's tied tables as two
    return {k: v.detach().contiguous() for k, v in sd.items()}


_FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_text_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_text_embed.text_embedder.linear_1.": "vector_in.in_layer.",
    "time_text_embed.text_embedder.linear_2.": "vector_in.out_layer.",
    "time_text_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_text_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "context_embedder.": "txt_in.",
    "x_embedder.": "img_in.",
    "proj_out.": "final_layer.linear.",
    "norm_out.linear.": "final_layer.adaLN_modulation.1.",
}
_FLUX_DOUBLE = {
    "norm1.linear.": "img_mod.lin.",
    "norm1_context.linear.": "txt_mod.lin.",
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "ff.net.0.proj.": "img_mlp.0.",
    "ff.net.2.": "img_mlp.2.",
    "ff_context.net.0.proj.": "txt_mlp.0.",
    "ff_context.net.2.": "txt_mlp.2.",
    "attn.to_out.0.": "img_attn.proj.",
    "attn.to_add_out.": "txt_attn.proj.",
}
_FLUX_SINGLE = {
    "norm.linear.": "modulation.lin.",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
    "proj_out.": "linear2.",
}
# Fused in BFL's layout: (diffusers' parts in order, their key)
_FLUX_FUSED = {
    "transformer_blocks": {("attn.to_q.", "attn.to_k.", "attn.to_v."): "img_attn.qkv.",
                           ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj."): "txt_attn.qkv."},
    "single_transformer_blocks": {("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp."): "linear1."},
}


def flux_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FLUX.1's transformer in Black Forest Labs' layout (`flux1-dev.safetensors`): the inverse of diffusers'
    `convert_flux_transformer_checkpoint_to_diffusers`."""
    sd, out = dict(state_dict), {}
    for blocks, theirs, table in (("transformer_blocks", "double_blocks", _FLUX_DOUBLE),
                                  ("single_transformer_blocks", "single_blocks", _FLUX_SINGLE)):
        indices = sorted({int(k.split(".")[1]) for k in sd if k.startswith(blocks + ".")})
        for i in indices:
            src, dst = f"{blocks}.{i}.", f"{theirs}.{i}."
            for parts, fused in _FLUX_FUSED[blocks].items():
                for kind in ("weight", "bias"):
                    out[f"{dst}{fused}{kind}"] = torch.cat([sd.pop(f"{src}{part}{kind}") for part in parts], dim=0)
            for key in [k for k in sd if k.startswith(src)]:
                rest = key[len(src):]
                prefix = next(p for p in table if rest.startswith(p))
                out[dst + table[prefix] + rest[len(prefix):]] = sd.pop(key)
    for key in list(sd):
        prefix = next(p for p in _FLUX_TOP if key.startswith(p))
        value = sd.pop(key)
        out[_FLUX_TOP[prefix] + key[len(prefix):]] = _swap_halves(value) if prefix == "norm_out.linear." else value
    return {k: v.detach().contiguous() for k, v in out.items()}


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (SD1, SD2, SDXL or SD3; Flux's transformer only)."""
    family = family_of_pipeline(pipe)
    if family.value == "sd3":
        return sd3_to_original(pipe)
    if family.value == "flux":  # as Black Forest Labs ship it: the transformer alone
        return flux_to_original(pipe.transformer.state_dict())
    sd = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    sd.update(vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)))
    for enc in family.spec.encoders:
        weights = getattr(pipe, enc.model_attr).state_dict()
        convert = open_clip_to_ldm if enc.openclip_layout else clip_to_ldm
        sd.update(convert(weights, enc.checkpoint_prefix))
    return {k: v.detach().contiguous() for k, v in sd.items()}
