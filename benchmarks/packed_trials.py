"""Packed trials on this machine: K trials trained together against one at a time (the CPU side of the GPU
benchmark's section 4, with the same code: `gpu_bench.packed`).

On the toy world's model (the one CPU sweeps and the toy proofs use) at 64 px, or with `--sd15` on the
full-size SD1.5 architecture (random weights, fp32) at 256 px: K = 1, 2, 4, 8 trials of batch 1 and of batch
4, each its own rate and seed, ms per group step (median after 2 warm-up steps) and trials per hour against
K trials one after another. Usage:

    .venv/bin/python benchmarks/packed_trials.py [--sd15] [--steps 6]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="the full-size SD1.5 architecture at 256 px (slow on a CPU)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()

    import torch
    from gpu_bench import packed

    from titk.models import load_model

    torch.manual_seed(0)
    if args.sd15:
        from titk.models.fixtures import build_sd15_full
        from titk.models.loading import bundle_from_pipeline

        bundle, size = bundle_from_pipeline(build_sd15_full(dtype=torch.float32, device="cpu"), name="sd15-random", source="random", device="cpu"), 256
    else:
        bundle, size = load_model("toyworld", dtype="fp32"), 64
    print(f"{bundle.name} at {size} px, {torch.get_num_threads()} threads, {args.steps} timed steps per setting")
    print("| batch | trials together | ms per group step | image views per s | trials per hour vs one at a time |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 4):
            one = None
            for k in args.trials:
                row = packed(bundle, "cpu", size, k, batch, args.steps, Path(tmp))
                one = one or row["ms_per_group_step"] / k
                print(f"| {batch} | {k} | {row['ms_per_group_step']:.0f} | {row['views_per_s']:.1f} | {k * one / row['ms_per_group_step']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
