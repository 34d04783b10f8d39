#!/usr/bin/env bash
# The README's test command: set up, build, run every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_BUILD_DIR:-$root/build}
sanitize_build=${PEFTKIT_SANITIZE_DIR:-$root/build-sanitize}
"$root/scripts/setup.sh"
# The sources follow .clang-format (scripts/format.sh rewrites them).
"$root/scripts/format.sh" --check
# Everything, and device code whenever nvcc is there (a folder the quickstart configured without
# it is switched back).
"$root/scripts/build.sh" -DPEFTKIT_CUDA=AUTO
# Every parser under libFuzzer with ASan + UBSan, built with Clang in the sanitizer folder and seeded
# by the corpora the fuzz script writes (PEFTKIT_FUZZ_SECONDS per target; PEFTKIT_SKIP_FUZZ=1 skips
# it on a machine without Clang).
[[ "${PEFTKIT_SKIP_FUZZ:-0}" == 1 ]] || PEFTKIT_SANITIZE_DIR="$sanitize_build" "$root/scripts/fuzz.sh"
status=0
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --output-junit "$build/ctest-junit.xml" ||
  status=$?
# The whole suite again, built with ASan + UBSan in a second folder, the fuzz targets'
# (PEFTKIT_SKIP_SANITIZE=1 skips it).
if [[ "${PEFTKIT_SKIP_SANITIZE:-0}" != 1 ]]; then
  PEFTKIT_SANITIZE_DIR="$sanitize_build" "$root/scripts/sanitize.sh" || status=$?
fi
# The reliability table (docs/RELIABILITY.md is one such table) from this run's own outputs.
fuzz_logs=$sanitize_build/findings
reliability_args=(--junit "$build/ctest-junit.xml"
                  --source "Run: scripts/test.sh, $(date -u +%Y-%m-%d), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores.")
[[ "${PEFTKIT_SKIP_FUZZ:-0}" == 1 || ! -d "$fuzz_logs" ]] || reliability_args+=(--fuzz-logs "$fuzz_logs")
[[ "${PEFTKIT_SKIP_SANITIZE:-0}" == 1 || ! -f "$sanitize_build/ctest-junit.xml" ]] ||
  reliability_args+=(--sanitize-junit "$sanitize_build/ctest-junit.xml")
"$root/.venv/bin/python" "$root/scripts/reliability.py" "${reliability_args[@]}" >"$build/RELIABILITY.md" ||
  true
echo "test: the reliability table of this run is $build/RELIABILITY.md"
exit "$status"
