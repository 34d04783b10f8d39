#!/usr/bin/env bash
# Configures and builds peftkit into build/ (or $PEFTKIT_BUILD_DIR). Extra arguments go to the
# CMake configure step, e.g. scripts/build.sh -DPEFTKIT_CUDA=OFF. PEFTKIT_BUILD_TARGETS="a b" builds
# only those targets (default: everything, the test suite included).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_BUILD_DIR:-$root/build}
# ccache keys on paths relative to the project, so fresh clones elsewhere (CI) hit the same cache.
export CCACHE_BASEDIR="$root"
export CCACHE_NOHASHDIR=1
mkdir -p "$build"
if ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${PEFTKIT_BUILD_TYPE:-RelWithDebInfo} "$@" \
     >"$build/configure.log" 2>&1; then
  cat "$build/configure.log"
  echo "build: CMake configure failed (log: $build/configure.log)" >&2
  exit 1
fi
targets=()
for target in ${PEFTKIT_BUILD_TARGETS:-}; do targets+=(--target "$target"); done
cmake --build "$build" -j "$(nproc)" "${targets[@]}"
