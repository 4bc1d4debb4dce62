"""Devices and precisions: what `auto` means on this machine."""

from __future__ import annotations

import torch

from .errors import TitkError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    cpu = torch.cpu
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    return False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TitkError(f"device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TitkError(f"device: {name} asked for, but this machine has no usable CUDA GPU")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype of the frozen model. `auto`: bf16 where the hardware does it natively, else fp16 on a GPU, fp32 on a CPU."""
    if name != "auto":
        if name not in DTYPES:
            raise TitkError(f"dtype: unknown precision {name!r} (use auto, fp32, bf16 or fp16)")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def release_gpu_memory() -> None:
    """Between trials: free tensors held only by reference cycles and hand cached GPU memory back. Only where
    there is a GPU: on a CPU, freed memory goes back by itself, and a full collection in a process holding a
    model, MLflow and pandas takes half a second per trial."""
    cuda, mps = torch.cuda.is_available(), getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if cuda or mps:
        import gc

        gc.collect()
        (torch.cuda if cuda else torch.mps).empty_cache()
