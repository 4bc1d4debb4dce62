#!/usr/bin/env bash
# The wheels benchmarks/gpu.sh installs on a GPU machine that has no package registry: what titk imports
# beyond that machine's image (CUDA PyTorch, transformers, huggingface-hub, safetensors, numpy, pandas, rich,
# typer, pyyaml, scipy, filelock, Pillow are there), at the dev environment's versions, for its Python
# (3.12, x86_64 Linux), and titk itself. Into .gpu-wheels/ (ignored by git; well under 60 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
# The versions the dev environment (scripts/setup.sh, constraints.txt) tested together.
pin() { echo "$1==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1")"; }
rm -rf "$DEST" && mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --dest "$DEST" \
    "$(pin diffusers)" "$(pin pydantic)" "$(pin pydantic-core)" "$(pin annotated-types)" "$(pin typing-inspection)" \
    "$(pin importlib-metadata)" "$(pin typing-extensions)"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DEST" .
du -sh "$DEST"
ls "$DEST"
