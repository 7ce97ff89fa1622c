#!/usr/bin/env bash
# GPU latency tables (ONNX Runtime's CUDA provider, batch 1 and 64), profiled and validated
# in one go; meant for the H200 machine but runs on any host whose onnxruntime has the
# provider (ONNX Runtime's CUDA provider ships in the `onnxruntime-gpu` package).
#
#   bash scripts/profile_gpu.sh OUT_DIR
#
# Writes OUT_DIR/<device>.json (the tables, ready for a workspace's hw_profiles/) and
# OUT_DIR/latency_validation_<device>.json for each batch size, where <device> is
# $PREFIX-ort-cuda-b<batch>. Settings, from the environment:
#   PREFIX (h200), PROVIDER (CUDAExecutionProvider), BATCHES ("1 64"),
#   SPACE (ofa_mbv3), RESOLUTIONS ("128 144 160 176 192 208 224"), N (100 held-out archs),
#   ROUNDS (3), TIME_CAP (0.1 s per measurement), OVERHEAD_ARCHS (10), PYTHON (python3).
# Every table resumes from OUT_DIR, so a run cut short continues where it stopped.
set -euo pipefail

out=${1:?usage: bash scripts/profile_gpu.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"  # the package, installed or not
python=${PYTHON:-python3}
prefix=${PREFIX:-h200}
provider=${PROVIDER:-CUDAExecutionProvider}
read -r -a resolutions <<< "${RESOLUTIONS:-128 144 160 176 192 208 224}"
mkdir -p "$out"

for batch in ${BATCHES:-1 64}; do
  device="$prefix-ort-cuda-b$batch"
  echo "== $device ($provider, batch $batch)"
  start=$(date +%s)
  "$python" "$here/bench_latency.py" "$out" --device "$device" --profile \
    --provider "$provider" --batch-size "$batch" --tables-dir "$out" \
    --space "${SPACE:-ofa_mbv3}" --resolutions "${resolutions[@]}" \
    --n "${N:-100}" --rounds "${ROUNDS:-3}" --time-cap "${TIME_CAP:-0.1}" \
    --overhead-archs "${OVERHEAD_ARCHS:-10}"
  echo "== $device: $(( $(date +%s) - start )) s"
done
