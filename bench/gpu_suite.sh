#!/usr/bin/env bash
# The whole test suite on the GPU machine, from the repository root there: builds for Hopper with
# the carried Debian packages (../shared/gpu/README.md: `.gpu-deps`), runs every test (the GPU-only
# ones run instead of skipping) and fails when any test fails or a GPU test skips.
#   bench/gpu_suite.sh [BUILD_DIR] [ctest arguments...]      (default build-gpu)
set -euo pipefail
build=${1:-build-gpu}
shift || true
# shellcheck disable=SC1091
source .gpu-deps/unpack.sh >/dev/null
venv=${PEFTKIT_VENV:-/opt/torch/.venv}
export PATH="$venv/bin:$PATH"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPEFTKIT_VENV="$venv" \
  -DCMAKE_CUDA_ARCHITECTURES="${PEFTKIT_CUDA_ARCH:-90}" >/dev/null
cmake --build "$build" -j "$(nproc)"
export PEFTKIT_VOCAB=${PEFTKIT_VOCAB:-$PWD/data/rwkv_vocab_v20230424.txt}
log=$(mktemp)
status=0
ctest --test-dir "$build" -j 8 --output-on-failure "$@" | tee "$log" || status=$?
# On this machine a GPU test that skips is a failure; the browser screenshot test may skip.
skipped=$(grep -E "\*\*\*Skipped" "$log" | grep -E "Cuda|Gpu|GraphedStep" || true)
rm -f "$log"
if [[ -n $skipped ]]; then
  echo "gpu_suite: GPU tests skipped on the GPU machine:" >&2
  echo "$skipped" >&2
  status=1
fi
exit "$status"
