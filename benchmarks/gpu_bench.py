"""The GPU benchmark: what titk's TI path does on one accelerator, in one run of at most about 8 minutes.

On the full-size SD1.5 architecture (random weights, bf16 frozen weights, fp32 vectors), measured with
titk's own code (`titk.train.loop.train`, `titk.models.sampling.generate`):

1. training at 512 px for batch 1, 3 and 8: ms per step, image views per second, achieved TFLOP/s (the
   UNet's forward and backward to the conditioning, counted by `titk.train.flops`) and its share of the
   device's dense bf16 peak (a table of known devices; none for others), peak memory beside `titk plan`'s
   estimate of it (titk.train.memory); and batch 1 with
   gradient accumulation 8, the loss read back after each micro-batch or once per update (`train.host_sync`);
   batch 3 with the UNet in channels-last memory format (`train.channels_last`);
2. sampling: images per second at 512 px, 20 steps, classifier-free guidance, batch 16;
3. the whole recipe trial of `experiments/recipes/a1111-15img-bs3-ga15-200steps.yaml` (15 images, batch 3,
   GA 15 clamped to 5 under A1111's rules, 200 steps: 3000 views) with 4 evaluations of 16 samples, end to
   end (latent caching included). Goal: at most 30 s on one H100/H200;
4. packed trials (`train_together`, `sweep.pack`): K = 1, 2, 4, 8 trials of batch 1 and of batch 3 trained
   together, ms per group step and trials per hour against one at a time (goal: 4x at K = 8), with each
   group's peak memory; and what fits a 24 GB card: batch 3 with and without gradient checkpointing, and a
   packed group of 4 with it;
5. `train.compile`: batch 3 with the UNet compiled (the first steps, which compile, not timed), last because
   compiling can take minutes.

Every section is written to the JSON as soon as it is measured, so a run cut short keeps what it measured.

Without CUDA, `--smoke` runs the same code on the tiny SD1 fixture at 64 px with a few steps (how the
script is tested on a CPU); the CUDA-only figures (peak share, memory) are recorded as skipped. Usage:

    bash benchmarks/gpu.sh                 # installs the carried wheels, then runs this; JSON and log in $OUT
    python benchmarks/gpu_bench.py [--smoke] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity).
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0, "A10": 125.0}
RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "recipes" / "a1111-15img-bs3-ga15-200steps.yaml"


def peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def model(device: str, smoke: bool):
    from titk.models.fixtures import build_sd15_full, build_tiny_pipeline
    from titk.models.loading import bundle_from_pipeline

    if smoke:
        pipe = build_tiny_pipeline()
        return bundle_from_pipeline(pipe, name="tiny-sd1", source="memory", device=device), 64
    pipe = build_sd15_full(dtype=torch.bfloat16, device=device)
    return bundle_from_pipeline(pipe, name="sd15-random", source="random", device=device), 512


def images(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepClock:
    """A training callback timing the updates from their own events (the device synchronised first)."""

    def __init__(self, device: str):
        self.device, self.times = device, []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def __call__(self, event) -> None:
        if event.kind == "update":
            sync(self.device)
            self.times.append(time.perf_counter())

    @property
    def step(self) -> float:
        """Median seconds per update; the first two updates warm up (allocation, autotuning)."""
        return float(np.median(np.diff(self.times[1:])))

    @property
    def peak_memory_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None


def config(data: Path, out: Path, size: int, train: dict):
    from titk.config import TrainConfig, parse

    return parse(TrainConfig, {
        "model": {"source": "random"},
        "embedding": {"name": "bench", "vectors": 8, "init_text": "person"},
        "data": {"path": str(data), "width": size, "height": size},
        "train": train,
        "output": {"dir": str(out), "save_every": 0, "preview": {"every": 0}},
    }, "benchmark")


def training(bundle, device: str, size: int, batch: int, steps: int, tmp: Path, grad_accum: int = 1, host_sync: str = "micro_batch",
             channels_last: bool = False, compile: bool = False) -> dict:
    """ms per step (update) over `steps` updates after 2 warm-up updates, from the updates' own events."""
    from titk.train.flops import unet_flops_per_view
    from titk.train.loop import train

    data = images(tmp / f"train-{batch}-{grad_accum}", batch * grad_accum, size)
    clock = StepClock(device)
    settings = {"batch_size": batch, "grad_accum": grad_accum, "host_sync": host_sync, "channels_last": channels_last,
                "compile": compile, "max_steps": steps + 2, "learning_rate": "0.005"}
    train(config(data, tmp / f"run-{batch}-{grad_accum}-{host_sync}-{channels_last}-{compile}", size, settings),
          bundle=bundle, show_progress=False, latent_cache=tmp / "cache", callback=clock)
    step = clock.step
    flops = unet_flops_per_view(dict(bundle.unet.config), size, size) * batch * grad_accum
    peak = peak_tflops(device)
    achieved = flops / step / 1e12
    return {
        "batch": batch, "grad_accum": grad_accum, "host_sync": host_sync, "channels_last": channels_last, "compile": compile,
        "size": size, "ms_per_step": round(step * 1000, 1),
        "views_per_s": round(batch * grad_accum / step, 2),
        "achieved_tflops": float(f"{achieved:.3g}"), "share_of_peak": round(achieved / peak, 3) if peak else None,
        "peak_memory_gib": clock.peak_memory_gib, "estimated_peak_gib": estimated_peak(bundle, size, batch),
    }


def estimated_peak(bundle, size: int, views: int, gradient_checkpointing: bool = False) -> float:
    """What `titk plan` estimates for the UNet's step of `views` views (titk.train.memory: the UNet alone, so a
    measured peak should read higher by the text encoder's and VAE's weights and CUDA's own)."""
    from titk.devices import dtype_name
    from titk.train.memory import step_memory

    peak = step_memory(dict(bundle.unet.config), size, size, batch=views, dtype=dtype_name(bundle.unet.dtype),
                       gradient_checkpointing=gradient_checkpointing).peak
    return float(f"{peak / 2**30:.3g}")  # three figures: the smoke run's tiny model needs a few MiB


def packed(bundle, device: str, size: int, k: int, batch: int, steps: int, tmp: Path, gradient_checkpointing: bool = False) -> dict:
    """K trials of `batch` trained together (each its own rate and seed): ms per group step, measured as
    `training` measures one, after 2 warm-up steps."""
    from titk.train.loop import Job, train_together

    data = images(tmp / f"packed-{batch}", batch, size)
    clock = StepClock(device)
    runs = Path(tempfile.mkdtemp(prefix=f"packed-{k}-{batch}-", dir=tmp))
    jobs = [Job(config(data, runs / str(i), size, {
        "batch_size": batch, "max_steps": steps + 2, "learning_rate": f"{0.005 * (i + 1)}", "seed": i,
        "gradient_checkpointing": gradient_checkpointing}), latent_cache=tmp / "cache", callback=clock if i == 0 else None)
        for i in range(k)]
    results = train_together(jobs, bundle=bundle, show_progress=False)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    return {"trials": k, "batch": batch, "gradient_checkpointing": gradient_checkpointing, "ms_per_group_step": round(clock.step * 1000, 1),
            "views_per_s": round(k * batch / clock.step, 2), "peak_memory_gib": clock.peak_memory_gib,
            "estimated_peak_gib": estimated_peak(bundle, size, k * batch, gradient_checkpointing)}


def sampling(bundle, device: str, size: int, batch: int, steps: int) -> dict:
    from titk.config import SamplingSettings
    from titk.models.sampling import generate

    settings = SamplingSettings(steps=steps, cfg=7.0, width=size, height=size, batch_size=batch)
    generate(bundle, ["a photo of a person"] * batch, list(range(batch)), settings)  # warm-up
    sync(device)
    start = time.perf_counter()
    generate(bundle, ["a photo of a person"] * batch, list(range(batch)), settings)
    sync(device)
    seconds = time.perf_counter() - start
    return {"batch": batch, "steps": steps, "cfg": 7.0, "size": size, "seconds": round(seconds, 2), "images_per_s": round(batch / seconds, 2)}


def recipe_trial(bundle, device: str, size: int, smoke: bool, tmp: Path) -> dict:
    """The recipe's whole trial on 15 images, with an evaluation of 16 samples every quarter of the run."""
    import yaml

    from titk.config import SamplingSettings
    from titk.embeddings.fit import vectors_for
    from titk.models.sampling import embedding_active, generate
    from titk.train.loop import train

    recipe = yaml.safe_load(RECIPE.read_text())
    settings = dict(recipe["train"]) | ({"max_steps": 4} if smoke else {})
    cfg = config(images(tmp / "recipe", 15, size), tmp / "recipe-run", size, settings)
    samples = SamplingSettings(steps=4 if smoke else 20, cfg=7.0, width=size, height=size, batch_size=16)
    every = max(1, settings["max_steps"] // 4)
    evaluations: list[float] = []

    def on_event(event) -> None:
        if event.kind == "update" and event.step % every == 0:
            started = time.perf_counter()
            with embedding_active(bundle, vectors_for(event.embedding, bundle)):
                generate(bundle, ["a photo of bench"] * 16, list(range(16)), samples, name="bench", n_vectors=event.embedding.n_vectors)
            sync(device)
            evaluations.append(time.perf_counter() - started)

    sync(device)
    start = time.perf_counter()
    result = train(cfg, bundle=bundle, show_progress=False, latent_cache=tmp / "recipe-cache", callback=on_event)
    sync(device)
    seconds = time.perf_counter() - start
    views = json.loads((result.run_dir / "plan.json").read_text()).get("image_views")
    return {"steps": result.steps_done, "image_views": views, "evaluations": len(evaluations), "samples_per_evaluation": 16,
            "seconds": round(seconds, 1), "evaluation_seconds": round(sum(evaluations), 1), "goal_seconds": 30}


def machine(device: str) -> str:
    text = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    return text + (f"; {torch.cuda.get_device_name(0)}" if device == "cuda" else "; no CUDA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny model at 64 px, a few steps (no GPU needed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: the full-size benchmark needs one (--smoke runs the tiny model on the CPU)")
    report: dict = {"machine": machine(device), "device": device, "smoke": args.smoke,
                    "skipped": ([] if device == "cuda" else ["share_of_peak and peak memory: no CUDA"])
                    # inductor compiles the tiny UNet's forward and backward for about 3 minutes on 2 CPU cores
                    + (["compile: not in --smoke"] if args.smoke else [])}
    bundle, size = model(device, args.smoke)
    steps = 2 if args.smoke else 8

    def record(section: str, value) -> None:
        report[section] = value
        print(json.dumps({section: value}), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record("training", [training(bundle, device, size, batch, steps, tmp) for batch in (1, 3, 8)])
        # train.host_sync: the loss read after each of 8 micro-batches, or once per update
        record("host_sync", [training(bundle, device, size, 1, steps // 2, tmp, grad_accum=8, host_sync=h) for h in ("micro_batch", "update")])
        record("channels_last", training(bundle, device, size, 3, steps, tmp, channels_last=True))  # against batch 3 above
        record("sampling", sampling(bundle, device, size, 4 if args.smoke else 16, 4 if args.smoke else 20))
        record("recipe_trial", recipe_trial(bundle, device, size, args.smoke, tmp))
        rows = []
        for batch in (1, 3):
            for k in (1, 2, 4, 8):
                rows.append(packed(bundle, device, size, k, batch, steps, tmp))
                one = next(r for r in rows if r["batch"] == batch and r["trials"] == 1)
                rows[-1]["trials_per_hour_vs_one_at_a_time"] = round(k * one["ms_per_group_step"] / rows[-1]["ms_per_group_step"], 2)
        record("packed", rows)
        record("memory_24gb", [packed(bundle, device, size, 1, 3, steps, tmp, gradient_checkpointing=False),
                               packed(bundle, device, size, 1, 3, steps, tmp, gradient_checkpointing=True),
                               packed(bundle, device, size, 4, 3, steps, tmp, gradient_checkpointing=True)])
        if not args.smoke:
            record("compile", training(bundle, device, size, 3, steps, tmp, compile=True))  # against batch 3 above


if __name__ == "__main__":
    main()
