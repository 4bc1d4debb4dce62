"""Training throughput of titk's TI loop on the full-size SD1.5 architecture (random weights).

Runs `titk.train.loop.train` itself, batch size 1, on a synthetic image, at 256 and 512 px, in fp32 and
bf16 (frozen weights stored in that precision), on the CPU and on CUDA when available. Step times come
from the run's own log; the first step is a warm-up and is not counted. Reports image views per second
and achieved TFLOP/s, counting the UNet's forward and backward to the conditioning (see
`titk.train.flops`). Usage:

    .venv/bin/python benchmarks/train_throughput.py [--steps 4] [--sizes 256 512] [--dtypes fp32 bf16] [--channels-last] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name(0)}"
    return text


def run(device: str, dtype: str, size: int, steps: int, workdir: Path, channels_last: bool = False) -> dict:
    from titk.config import TrainConfig, parse
    from titk.devices import DTYPES
    from titk.models.fixtures import build_sd15_full
    from titk.models.loading import bundle_from_pipeline
    from titk.train.flops import unet_flops_per_view
    from titk.train.loop import train

    data = workdir / f"img{size}"
    data.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(data / "a.png")
    pipe = build_sd15_full(dtype=DTYPES[dtype], device=device)
    bundle = bundle_from_pipeline(pipe, name="sd15-random", source="random", device=device)
    out = workdir / f"run-{device}-{dtype}-{size}"
    config = parse(TrainConfig, {
        "model": {"source": "random"},
        "embedding": {"name": "bench", "vectors": 8, "init_text": "person"},
        "data": {"path": str(data), "width": size, "height": size},
        "train": {"batch_size": 1, "max_steps": steps + 1, "channels_last": channels_last},
        "output": {"dir": str(out), "save_every": 0, "preview": {"every": 0}},
    }, "benchmark")
    train(config, bundle=bundle, show_progress=False, latent_cache=workdir / "cache")
    with open(out / "train_log.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    step_times = [b - a for a, b in zip(seconds, seconds[1:])]  # the first step (warm-up) is not counted
    step = statistics.median(step_times)
    flops = unet_flops_per_view(dict(bundle.unet.config), size, size)
    del bundle, pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "device": device, "dtype": dtype, "size": size, "channels_last": channels_last, "step_s": round(step, 3), "views_per_s": round(1 / step, 3),
        "tflops_per_view": round(flops / 1e12, 3), "achieved_tflops": round(flops / step / 1e12, 3),
        "step_times": [round(s, 3) for s in step_times],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last: the UNet in NHWC while training")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.devices:
            for dtype in args.dtypes:
                for size in args.sizes:
                    results.append(run(device, dtype, size, args.steps, Path(tmp), args.channels_last))
                    r = results[-1]
                    print(f"{device} {dtype} {size}px: {r['step_s']} s/step, {r['views_per_s']} views/s, {r['achieved_tflops']} TFLOP/s", flush=True)
    print(f"\nmachine: {machine()}\n")
    print("| device | precision | size | s/step | image views/s | TFLOP/view | achieved TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['device']} | {r['dtype']} | {r['size']} | {r['step_s']} | {r['views_per_s']} | {r['tflops_per_view']} | {r['achieved_tflops']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
