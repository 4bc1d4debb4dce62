"""What `titk doctor` reports: versions, devices and their abilities, where things are looked for, the hub."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from .paths import cache_dir, hf_cache_dir, insightface_root

LIBRARIES = (
    "torch", "torchvision", "diffusers", "transformers", "safetensors", "accelerate", "open-clip-torch",
    "insightface", "onnxruntime", "mlflow", "optuna", "pandas", "pydantic", "typer",
)
HUB_URL = "https://huggingface.co"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    from . import __version__

    out = {"titk": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    out.update({lib: _version(lib) for lib in LIBRARIES})
    return out


def devices() -> dict[str, str]:
    import torch

    from .devices import cpu_has_fast_bf16, resolve_device, resolve_dtype

    out = {
        "cpu": f"{os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
        f"bf16 {'native' if cpu_has_fast_bf16() else 'emulated (slow)'}",
        "torch threads": str(torch.get_num_threads()),
        "cuda": "not available" if not torch.cuda.is_available() else f"CUDA {torch.version.cuda}",
    }
    if torch.version.cuda is None:
        out["cuda"] += " (this torch has no CUDA support)"
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out[f"cuda:{i}"] = (
                f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, "
                f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
            )
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = "available" if mps and mps.is_available() else "not available"
    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    sdpa_text = "yes" if sdpa else "no"
    if sdpa and torch.cuda.is_available():
        kernels = [
            name for name, on in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("memory-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("math", torch.backends.cuda.math_sdp_enabled()),
            ) if on
        ]
        sdpa_text += f" ({', '.join(kernels)})"
    out["sdpa"] = sdpa_text
    device = resolve_device("auto")
    out["auto device / dtype"] = f"{device} / {str(resolve_dtype('auto', device)).removeprefix('torch.')}"
    return out


def locations() -> dict[str, str]:
    face_root = insightface_root()
    packs_dir = face_root / "models"
    packs = sorted(p.name for p in packs_dir.iterdir() if p.is_dir()) if packs_dir.is_dir() else []
    return {
        "titk cache": str(cache_dir()),
        "hub model cache": str(hf_cache_dir()),
        "face packs": f"{packs_dir} ({', '.join(packs) if packs else 'none found'}); a pack may also be a folder path",
        "onnxruntime providers": _onnx_providers(),
    }


def _onnx_providers() -> str:
    try:
        import onnxruntime

        return ", ".join(onnxruntime.get_available_providers())
    except ImportError:
        return "onnxruntime not installed"


def hub_status(timeout: float = 3.0) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode (HF_HUB_OFFLINE is set); not tried"
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(HUB_URL, method="HEAD"), timeout=timeout):
            return f"reachable ({HUB_URL})"
    except urllib.error.HTTPError as exc:  # an answer, even an error status, means the host is reachable
        return f"reachable ({HUB_URL} answered {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"unreachable ({reason}); load models from local paths"


def report() -> dict[str, dict[str, str]]:
    return {
        "versions": versions(),
        "devices": devices(),
        "locations": locations(),
        "model hub": {"huggingface.co": hub_status()},
    }
