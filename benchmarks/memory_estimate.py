"""What one training step needs on a GPU, estimated without one: the table in docs/benchmarks.md.

`titk plan`'s estimate (titk.train.memory: the frozen denoiser built on fake tensors, one step's forward and
backward to the conditioning, the storages alive counted in the CUDA allocator's blocks) for each family's
standard architecture at its native size, in bf16, by views per step (a packed group of K trials of batch B is
one step of K·B views), without and with gradient checkpointing. The text encoders, the VAE and CUDA's own
(about 0.5 GiB) are not in it. Usage:

    .venv/bin/python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import os

ROWS = [("sd1", 512, [1, 3, 12, 24]), ("sdxl", 1024, [1, 4, 16]), ("sd3", 1024, [1, 4]), ("flux", 1024, [1, 4])]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from titk.models.families import Family
    from titk.models.loading import shipped_architecture
    from titk.train.memory import step_memory

    print("| family | size | views per step | weights GiB | activations GiB | peak GiB | peak with gradient checkpointing GiB |")
    print("|---|---|---|---|---|---|---|")
    for family, size, batches in ROWS:
        arch = shipped_architecture(Family(family))
        for batch in batches:
            plain = step_memory(arch.unet, size, size, batch=batch, vae_scale=arch.vae_scale).to_dict()
            saved = step_memory(arch.unet, size, size, batch=batch, vae_scale=arch.vae_scale, gradient_checkpointing=True).to_dict()
            print(f"| {family} | {size} | {batch} | {plain['weights_gib']} | {plain['activations_gib']} | {plain['peak_gib']} | {saved['peak_gib']} |", flush=True)


if __name__ == "__main__":
    main()
