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

# The tests start a private PostgreSQL server and render the HTML report in headless Chromium;
# install what is missing where we may (Debian's packages).
if [[ -n "$extras" ]]; then
    missing=()
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    if (( ${#missing[@]} )); then
        if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "note: ${missing[*]} not installed; the tests that need them will be skipped" >&2
        fi
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
