"""GPU memory of a training step, estimated on fake tensors (no weights, no compute, no GPU needed).

The frozen denoiser is built from its config under torch's FakeTensorMode, and one training step of a batch runs
on it (forward, and backward to the conditioning only: `titk.train.flops.denoiser_step`) while a dispatch mode
adds up the bytes of every tensor storage alive, rounded up to the 512-byte blocks of PyTorch's CUDA allocator.
The fake tensors sit on the CPU, whose attention is a fused (flash) kernel as on a GPU, so the attention matrix
is never held whole. The peak counts what the allocator must hand out at once: the weights, the activations kept
for the backward, and the backward's own. It leaves out what no op allocates: CUDA's context (about 0.5 GiB),
the allocator's fragmentation and the kernels' workspaces; and the text encoders and the VAE (titk caches
latents, so the VAE is not needed while training). `benchmarks/gpu_bench.py` sets the estimate beside what a GPU
measures.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from functools import lru_cache

BLOCK = 512  # bytes: the CUDA caching allocator's smallest block


@dataclass(frozen=True)
class StepMemory:
    """Bytes a training step of the frozen denoiser needs at its peak, and how much of it is the weights."""

    weights: int
    peak: int

    @property
    def activations(self) -> int:
        return self.peak - self.weights

    def to_dict(self) -> dict:
        gib = 2**30
        return {"weights_gib": round(self.weights / gib, 2), "activations_gib": round(self.activations / gib, 2), "peak_gib": round(self.peak / gib, 2)}


def live_bytes():
    """A TorchDispatchMode counting the bytes of tensor storages alive (`.live`) and their most at once (`.peak`),
    from the moment it is made: a storage counts from the op that made it until Python frees it."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.weak import WeakIdKeyDictionary

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self._known = WeakIdKeyDictionary()  # storage -> the weak reference whose callback frees its bytes

        def add(self, tensor) -> None:
            storage = tensor.untyped_storage()
            if storage in self._known:  # a view, or an op's output written into an input
                return
            size = -(-storage.nbytes() // BLOCK) * BLOCK
            self.live += size
            self.peak = max(self.peak, self.live)
            self._known[storage] = weakref.ref(storage, lambda _, size=size: self._free(size))

        def _free(self, size: int) -> None:
            self.live -= size

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    self.add(value)
            return out

    return LiveBytes()


def step_memory(unet_config: dict, width: int, height: int, *, batch: int, dtype: str = "bf16",
                gradient_checkpointing: bool = False, vae_scale: int = 8) -> StepMemory:
    """The peak memory of one training step of `batch` views at width × height pixels (a packed group of K trials
    of batch B is one step of K·B views), the frozen denoiser held in `dtype`."""
    return _remembered(json.dumps(unet_config, sort_keys=True), width // vae_scale, height // vae_scale, batch, dtype, gradient_checkpointing)


@lru_cache(maxsize=64)
def _remembered(config_json: str, lat_w: int, lat_h: int, batch: int, dtype: str, gradient_checkpointing: bool) -> StepMemory:
    from .flops import remembered

    weights, peak = remembered(f"memory|{config_json}|{lat_w}x{lat_h}|{batch}|{dtype}|{gradient_checkpointing}", __file__,
                               lambda: _count(config_json, lat_w, lat_h, batch, dtype, gradient_checkpointing))
    return StepMemory(int(weights), int(peak))


def _count(config_json: str, lat_w: int, lat_h: int, batch: int, dtype: str, gradient_checkpointing: bool) -> list[int]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..devices import DTYPES
    from .flops import denoiser_step

    counter = live_bytes()
    with FakeTensorMode(), counter:
        step = denoiser_step(json.loads(config_json), lat_w, lat_h, batch=batch, device="cpu", dtype=DTYPES[dtype],
                             gradient_checkpointing=gradient_checkpointing)
        weights = counter.live  # the model's parameters and buffers, and the step's inputs (a few kB)
        step()
        del step
    return [weights, counter.peak]
