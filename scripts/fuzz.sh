#!/usr/bin/env bash
# Builds the libFuzzer targets (Clang, AddressSanitizer + UndefinedBehaviorSanitizer) into
# build-fuzz/ (or $PEFTKIT_FUZZ_BUILD_DIR), writes their seed corpora (PyTorch-, NumPy- and
# safetensors-written files plus the reproducers of known crashes), and runs every target for
# $PEFTKIT_FUZZ_SECONDS seconds (default 20). A crash, sanitizer report, leak, timeout (10 s per
# input) or an input that makes the process exceed 2 GiB of memory (or one allocation of 512 MiB)
# fails the run; what the fuzzer found is kept in build-fuzz/findings/<target>/.
# Usage: scripts/fuzz.sh [TARGET...]   (default: every target)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=${PEFTKIT_FUZZ_SECONDS:-20}
export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1
mkdir -p "$build"
if ! CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
     -DPEFTKIT_FUZZ=ON >"$build/configure.log" 2>&1; then
  cat "$build/configure.log"
  echo "fuzz: CMake configure failed (log: $build/configure.log)" >&2
  exit 1
fi
cmake --build "$build" --target fuzz_targets -j "$(nproc)"

corpus="$build/corpus"
rm -rf "$corpus"
"$root/.venv/bin/python" "$root/tests/fuzz/make_corpus.py" "$corpus" "$root/data/rwkv_vocab_v20230424.txt" \
  "$root/recipes" >/dev/null

targets=("$@")
((${#targets[@]})) || targets=(pth safetensors npy binidx jsonl recipe vocab adapter_config state_file
                               prequantized_nf4 prequantized_int8)
# Leaks inside LibTorch's own one-time initialisation are not ours.
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:handle_abort=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PEFTKIT_VOCAB="$root/data/rwkv_vocab_v20230424.txt" OMP_NUM_THREADS=1
passed=0 failed=0
for t in "${targets[@]}"; do
  findings="$build/findings/$t"
  rm -rf "$findings" && mkdir -p "$findings" "$corpus/$t"
  log="$build/findings/$t.log"
  if "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
       -max_len=1100000 -artifact_prefix="$findings/" -print_final_stats=1 "$corpus/$t" >"$log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    echo "fuzz_$t: ok ($runs inputs in ${seconds}s)"
    passed=$((passed + 1))
  else
    echo "fuzz_$t: FAILED (log: $log, input: $(ls "$findings" | head -1))"
    tail -n 40 "$log"
    failed=$((failed + 1))
  fi
done
echo "fuzz targets: $passed passed, $failed failed"
((failed == 0))
