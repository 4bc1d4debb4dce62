#!/usr/bin/env bash
# Creates .venv with titk and everything it needs. Safe to run again: it does nothing when the
# environment already matches pyproject.toml and constraints.txt.
#   scripts/setup.sh         the toolkit
#   scripts/setup.sh --dev   plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [[ "${1:-}" == "--dev" ]]; then extras="[dev]"; fi

python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi

# The distributed tests start a private PostgreSQL server; install it where it is missing and we may.
if [[ -n "$extras" ]] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "note: PostgreSQL is not installed; the distributed tests will be skipped" >&2
    fi
fi

stamp=".venv/.titk-installed$extras"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    # One resolve with the constraints file: torch and torchvision come as a matching pair from PyPI
    # (CUDA builds, which also run on a CPU-only machine), never a torch swapped in by another package.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".$extras"
    echo "$want" > "$stamp"
fi
