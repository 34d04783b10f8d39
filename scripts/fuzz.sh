#!/usr/bin/env bash
# Builds the libFuzzer targets (Clang, AddressSanitizer + UndefinedBehaviorSanitizer) in the
# sanitizer build folder, build-sanitize/ (or $PEFTKIT_SANITIZE_DIR; scripts/sanitize.sh configures
# it, and the sanitized test suite shares its objects), writes their seed corpora (files PyTorch,
# NumPy, safetensors and peftkit itself write, plus the reproducers of known crashes), and runs every
# target for $PEFTKIT_FUZZ_SECONDS seconds (default 20). A crash, sanitizer report, leak, timeout
# (10 s per input), or an input (at most 1.1 MB) that makes the process exceed 2 GiB of memory or
# make one allocation over 64 MiB fails the run; what the fuzzer found is kept in
# build-sanitize/findings/<target>/.
# Usage: scripts/fuzz.sh [TARGET...]   (default: every target)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_SANITIZE_DIR:-$root/build-sanitize}
seconds=${PEFTKIT_FUZZ_SECONDS:-20}
if ! command -v clang++ >/dev/null; then
  echo "fuzz: libFuzzer needs Clang (clang++ was not found; PEFTKIT_SKIP_FUZZ=1 skips fuzzing)" >&2
  exit 1
fi
CC=clang CXX=clang++ PEFTKIT_SANITIZE_DIR="$build" "$root/scripts/sanitize.sh" --build fuzz_targets

# Seeds peftkit itself writes (a model, a trained state + LoRA adapter, its checkpoint, nf4 and int8
# pre-quantized caches, HF PEFT and Ai00 exports), when the main build is there.
peftkit="${PEFTKIT_BUILD_DIR:-$root/build}/bin/peftkit"
written="$build/peftkit-written"
rm -rf "$written" && mkdir -p "$written"
if [[ -x "$peftkit" ]]; then
  (
    cd "$written"
    "$peftkit" init-model --layers 2 --embd 64 --head-size 32 --vocab 100 --seed 1 --out model.pth
    "$peftkit" init-model --layers 1 --embd 32 --head-size 16 --vocab 50 --out small.safetensors
    "$root/.venv/bin/python" -c "import numpy as np; np.save('tokens.npy', (np.arange(400) * 7 % 90).astype('<u2'))"
    for quant in nf4 int8; do
      printf '[model]\npath = "model.pth"\n[data]\nformat = "numpy"\npath = "tokens.npy"\n[peft]\nmethod = ["state", "lora"]\n[peft.lora]\nr = 4\n[quant]\nmethod = "%s"\ncache_file = "cache-%s.safetensors"\n[train]\nctx_len = 8\nmicro_bsz = 1\nepoch_steps = 2\nepoch_count = 1\nprecision = "fp32"\n[output]\ndir = "run-%s"\n' \
        "$quant" "$quant" "$quant" >"$quant.toml"
      "$peftkit" train "$quant.toml"
    done
    "$peftkit" export --base model.pth --adapter run-nf4/rwkv-0.pth --method lora --format hf-peft --output hf
    "$peftkit" export --base model.pth --adapter run-nf4/rwkv-0.pth --method state --format ai00 --output ai00.safetensors
    "$peftkit" export --base model.pth --adapter run-nf4/rwkv-0.pth --method state --format rwkv-pth --output state.pth
  ) >"$build/peftkit-written.log" 2>&1 || { cat "$build/peftkit-written.log"; echo "fuzz: writing peftkit's seeds failed" >&2; exit 1; }
else
  echo "fuzz: no $peftkit (run scripts/build.sh first for seeds peftkit writes); using the others"
fi

corpus="$build/corpus"
rm -rf "$corpus"
"$root/.venv/bin/python" "$root/tests/fuzz/make_corpus.py" "$corpus" "$root/data/rwkv_vocab_v20230424.txt" \
  "$root/recipes" "$written" >/dev/null

targets=("$@")
((${#targets[@]})) || targets=(pth safetensors npy binidx jsonl recipe vocab adapter_config state_file
                               prequantized_nf4 prequantized_int8)
# Leaks inside LibTorch's own one-time initialisation are not ours.
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:handle_abort=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PEFTKIT_VOCAB="$root/data/rwkv_vocab_v20230424.txt" OMP_NUM_THREADS=1
# libFuzzer runs on one core: nproc targets run at once, each for its full time.
fuzz_one() {
  local t=$1 findings="$build/findings/$1" log="$build/findings/$1.log"
  rm -rf "$findings" && mkdir -p "$findings" "$corpus/$t"
  if "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=64 \
       -max_len=1100000 -artifact_prefix="$findings/" -print_final_stats=1 "$corpus/$t" >"$log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    echo "fuzz_$t: ok ($runs inputs in ${seconds}s)"
  else
    echo "fuzz_$t: FAILED (log: $log, input: $(ls "$findings" | head -1))"
    tail -n 40 "$log"
    return 1
  fi
}
mkdir -p "$build/findings"
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= $(nproc))); do wait -n || true; done
  (if fuzz_one "$t"; then result=passed; else result=failed; fi; echo $result >"$build/findings/$t.result") &
done
wait
passed=0 failed=0
for t in "${targets[@]}"; do
  if grep -qx passed "$build/findings/$t.result" 2>/dev/null; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "fuzz targets: $passed passed, $failed failed"
((failed == 0))
