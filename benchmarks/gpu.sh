#!/usr/bin/env bash
# The GPU benchmark in one command, on a CUDA machine that has only its image's packages (CUDA PyTorch,
# transformers, safetensors, pandas, rich, typer ...) and no package registry:
#   scripts/gpu-wheels.sh         here, where PyPI is reachable: the wheels titk needs beyond that image
#   bash benchmarks/gpu.sh        there, with .gpu-wheels/ carried: installs them offline (--no-deps) into a
#                                 folder of their own, runs benchmarks/gpu_bench.py; gpu.json and gpu.log in $OUT
# Arguments go to gpu_bench.py (--smoke: the tiny model on a CPU). PYTHON picks the interpreter (python3),
# TITK_GPU_WHEELS the wheel folder; without wheels the interpreter's own packages are used.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work/gpu-bench}
WHEELS=${TITK_GPU_WHEELS:-.gpu-wheels}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    site=$(mktemp -d)/site
    "$PY" -m pip install --quiet --no-index --no-deps --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $site" | tee "$OUT/gpu.log"
else
    echo "no wheels in $WHEELS: using $PY's own packages" | tee "$OUT/gpu.log"
fi
export HF_HUB_OFFLINE=1
"$PY" benchmarks/gpu_bench.py --json "$OUT/gpu.json" "$@" 2>&1 | tee -a "$OUT/gpu.log"
