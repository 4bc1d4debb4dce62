"""benchmarks/gpu.sh, the GPU benchmark's one command, run on the CPU with its CUDA-only parts skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args):
    env = {**os.environ, "PYTHON": sys.executable, "TITK_GPU_WHEELS": str(tmp_path / "no-wheels"), "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], env=env, capture_output=True, text=True, timeout=600)


def test_the_gpu_benchmark_runs_on_a_cpu_with_the_cuda_parts_skipped(tmp_path):
    """--smoke: the same measurements on the tiny model at 64 px; JSON and log in $OUT."""
    done = _run(tmp_path, "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert report["device"] == "cpu" and report["skipped"] == ["share_of_peak and peak memory: no CUDA", "compile: not in --smoke"]
    assert [r["batch"] for r in report["training"]] == [1, 3, 8] and all(r["ms_per_step"] > 0 and r["share_of_peak"] is None for r in report["training"])
    assert [(r["grad_accum"], r["host_sync"]) for r in report["host_sync"]] == [(8, "micro_batch"), (8, "update")]
    assert report["channels_last"]["channels_last"] and report["channels_last"]["batch"] == 3
    assert report["sampling"]["images_per_s"] > 0
    trial = report["recipe_trial"]
    assert trial["evaluations"] == 4 and trial["samples_per_evaluation"] == 16 and trial["image_views"] == 60  # 4 steps of 15 images
    packed = report["packed"]
    assert [(r["batch"], r["trials"]) for r in packed] == [(b, k) for b in (1, 3) for k in (1, 2, 4, 8)]
    assert all(r["trials_per_hour_vs_one_at_a_time"] > 0 for r in packed) and packed[0]["trials_per_hour_vs_one_at_a_time"] == 1
    assert [(r["trials"], r["gradient_checkpointing"]) for r in report["memory_24gb"]] == [(1, False), (1, True), (4, True)]
    # titk plan's estimate beside each measured peak (the measured one is CUDA's: null here)
    unpacked, checkpointed, group = (r["estimated_peak_gib"] for r in report["memory_24gb"])
    assert all(r["peak_memory_gib"] is None and r["estimated_peak_gib"] > 0 for r in report["training"] + report["packed"])
    assert checkpointed < unpacked and group > checkpointed
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "no wheels in" in log and '"recipe_trial": {' in log and '"evaluations": 4' in log and '"packed": [' in log


def test_the_full_size_benchmark_needs_cuda(tmp_path):
    done = _run(tmp_path)
    if "no CUDA device" not in done.stdout + done.stderr:
        assert done.returncode == 0  # a machine with CUDA runs it
        return
    assert done.returncode != 0 and "--smoke runs the tiny model on the CPU" in done.stdout + done.stderr
