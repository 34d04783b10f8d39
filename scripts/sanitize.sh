#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer: a build of everything
# (host code; no device code) in build-sanitize/ (or $PEFTKIT_SANITIZE_DIR), then ctest there. Any
# sanitizer report fails the test that caused it; ctest's JUnit file ($build/ctest-junit.xml) feeds
# scripts/reliability.py. Leak checking is the fuzz targets' part
# (scripts/fuzz.sh): here the processes share LibTorch's process-lifetime allocations.
#   scripts/sanitize.sh [ctest arguments...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_SANITIZE_DIR:-$root/build-sanitize}
PEFTKIT_BUILD_DIR="$build" PEFTKIT_BUILD_TYPE=RelWithDebInfo "$root/scripts/build.sh" \
  -DPEFTKIT_SANITIZE=ON -DPEFTKIT_CUDA=OFF
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --output-junit "$build/ctest-junit.xml" "$@"
