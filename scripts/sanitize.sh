#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer: a build (host code, no
# device code) in build-sanitize/ (or $PEFTKIT_SANITIZE_DIR) at -O1 with line tables only (the
# sanitizers' reports keep file and line; the build takes half the time of -O2 -g), then ctest
# there. Clang builds it when it is installed: every source then also carries libFuzzer's coverage
# and the folder holds the fuzz targets too (scripts/fuzz.sh builds and runs them here), so CI
# compiles the sanitized sources once. Any sanitizer report fails the test that caused it; ctest's
# JUnit file ($build/ctest-junit.xml) feeds scripts/reliability.py. Leak checking is the fuzz
# targets' part: here the processes share LibTorch's process-lifetime allocations.
#   scripts/sanitize.sh                      build everything, run every test
#   scripts/sanitize.sh ARGS...              build everything, run ctest with these arguments
#   scripts/sanitize.sh --build TARGET...    only build these targets (scripts/fuzz.sh does so)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_SANITIZE_DIR:-$root/build-sanitize}
build_only=0 targets=""
if [[ ${1:-} == --build ]]; then
  shift
  build_only=1 targets="$*"
fi
if [[ -z ${CXX:-} ]] && command -v clang++ >/dev/null; then export CC=clang CXX=clang++; fi
PEFTKIT_BUILD_DIR="$build" PEFTKIT_BUILD_TYPE=RelWithDebInfo PEFTKIT_BUILD_TARGETS="$targets" \
  "$root/scripts/build.sh" -DPEFTKIT_SANITIZE=ON -DPEFTKIT_CUDA=OFF \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
((build_only)) && exit 0
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --output-junit "$build/ctest-junit.xml" "$@"
