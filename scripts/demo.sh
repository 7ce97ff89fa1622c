#!/usr/bin/env bash
# Set up .venv (if needed) and run the main job on the embedded default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
exec .venv/bin/ofa-search demo "$@"
