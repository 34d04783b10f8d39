#!/usr/bin/env bash
# The README's test command: set up, build, run every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
# The sources follow .clang-format (scripts/format.sh rewrites them).
"$root/scripts/format.sh" --check
# Everything, and device code whenever nvcc is there (a folder the quickstart configured without
# it is switched back).
"$root/scripts/build.sh" -DPEFTKIT_CUDA=AUTO
# Every parser under libFuzzer with ASan + UBSan, seeded by the corpora the fuzz script writes
# (PEFTKIT_FUZZ_SECONDS per target; PEFTKIT_SKIP_FUZZ=1 skips it on a machine without Clang).
[[ "${PEFTKIT_SKIP_FUZZ:-0}" == 1 ]] || "$root/scripts/fuzz.sh"
ctest --test-dir "${PEFTKIT_BUILD_DIR:-$root/build}" --output-on-failure -j "$(nproc)"
