#!/usr/bin/env bash
# The README's test command: set up, build, run every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
ctest --test-dir "${PEFTKIT_BUILD_DIR:-$root/build}" --output-on-failure -j "$(nproc)"
