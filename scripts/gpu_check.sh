#!/usr/bin/env bash
# The prepared GPU check (issue 21): CUDA tests, the supernet step benchmark, and GPU
# latency tables (PyTorch backend, fp16, CUDA graphs, batch 1 and 64) with their
# validation; at most 8 minutes on one GPU, JSON under OUT_DIR. See scripts/gpu_check.py.
#
#   bash scripts/gpu_check.sh OUT_DIR [--budget 480]
#
# Runs with the host's python3 (PYTHON to override) and needs only torch, numpy, onnx and
# pytest besides this repository.
set -euo pipefail
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [--budget SECONDS]}
shift
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$out" "$@"
