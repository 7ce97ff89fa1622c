#!/usr/bin/env bash
# Create (or reuse) .venv and install ofa-search into it with its dev tools.
# A CPU build of torch is installed first when none is present, so that pip does not
# resolve the torch requirement to a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $("$python_bin" --version)"
    "$python_bin" -m venv .venv
fi
py=.venv/bin/python
stamp=.venv/.ofa-search-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing the CPU build of torch"
    "$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
        || "$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
            --index-url https://download.pytorch.org/whl/cpu
fi
echo "[setup] installing ofa-search and its dependencies"
"$py" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "$want" > "$stamp"
