#!/usr/bin/env bash
# usage: cuda_architectures_test.sh SOURCE_DIR VENV
# The quickstart configures its folder without device code on a machine without a GPU, and
# scripts/test.sh then reconfigures it with device code: the architectures must be ours (80 89 90),
# not the 75 CMake cached for LibTorch's CUDA probe in between (our kernels need sm_80).
set -euo pipefail
source_dir=$1 venv=$2
if [[ ! -x /usr/local/cuda/bin/nvcc ]] && ! command -v nvcc >/dev/null; then
  echo "[  SKIPPED ] no nvcc"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake -S "$source_dir" -B "$work" -G Ninja -DPEFTKIT_VENV="$venv" -DPEFTKIT_BUILD_TESTS=OFF \
  -DPEFTKIT_CUDA=OFF >"$work/first.log" 2>&1 || { cat "$work/first.log"; exit 1; }
cmake -S "$source_dir" -B "$work" -DPEFTKIT_CUDA=AUTO >"$work/second.log" 2>&1 ||
  { cat "$work/second.log"; exit 1; }
grep -q "peftkit: CUDA .*, architectures 80;89;90$" "$work/second.log" ||
  { grep "peftkit:" "$work/second.log"; echo "FAIL: device code not configured for 80;89;90" >&2; exit 1; }
echo "architectures 80;89;90 after a configure without device code"
