#!/usr/bin/env bash
# The GPU milestone's benchmark, on the GPU machine from the repository root: builds, checks the
# kernels against the float64 CPU references, times them, and trains end to end; prints tables
# for bench/RESULTS.md.
#   bench/gpu.sh BUILD_DIR [PART...]     PART: check kernels train mfu (default: all four)
# check    kernels_test's GPU parts (WKV7 and every fused op vs float64, gradients, determinism)
# kernels  WKV7 forward and forward + backward at the milestone's shapes (bench/wkv7_bench)
# train    peftkit train, 0.1B geometry, ctx 1024 (every method) and 4096 (state, LoRA), micro_bsz 1
#          and 8, and ctx 16384 in segments of 4096 (train_gpu.sh)
# mfu      LoRA r32 on the 1.5B geometry, ctx 1024, micro_bsz 8, and its model FLOPs utilisation:
#          tokens/s x (4 x matmul parameters + WKV flops per token) / the measured bf16 matmul rate
#          (grad_cp on, as train_gpu.sh; GRAD_CP=false measures it without the recomputation,
#          KEEP_WKV=true with grad_cp_keep_wkv)
set -euo pipefail
build=$1
shift
parts=${*:-check kernels train mfu}
here=$(dirname "$0")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cmake --build "$build" >/dev/null
for part in $parts; do
  case $part in
    check)
      echo "## GPU correctness (kernels_test)"
      # A failing GPU test fails the benchmark: numbers of a wrong kernel are not numbers.
      log=$(mktemp)
      status=0
      "$build/tests/kernels_test" --gtest_filter='*Cuda*' >"$log" 2>&1 || status=$?
      grep -E "relative error|Failure|Expected|actual|\[  (PASSED|FAILED|SKIPPED) |OK \]" "$log" || true
      if grep -q "\[  SKIPPED \]" "$log"; then echo "gpu.sh: GPU tests skipped (no GPU?)" >&2; status=1; fi
      rm -f "$log"
      ((status == 0)) || { echo "gpu.sh: the GPU correctness tests failed" >&2; exit 1; }
      ;;
    kernels)
      echo "## WKV7 kernels, bf16, N = 64, h0 in and dh0 out"
      "$build/bench/wkv7_bench"
      ;;
    train)
      echo "## peftkit train, 0.1B, ctx 1024"
      "$here/train_gpu.sh" "$build" 0.1b "state lora pissa miss full" none "1 8" 1024 8
      echo "## peftkit train, 0.1B, ctx 4096"
      "$here/train_gpu.sh" "$build" 0.1b "state lora" none "1 8" 4096 6
      echo "## peftkit train, 0.1B, ctx 16384 in segments of 4096 (chunk_ctx)"
      CHUNK_CTX=4096 "$here/train_gpu.sh" "$build" 0.1b "state lora" none 1 16384 4
      ;;
    mfu)
      echo "## MFU, LoRA r32, 1.5B, ctx 1024, micro_bsz 8"
      table=$("$here/train_gpu.sh" "$build" 1.5b lora none 8 1024 8)
      echo "$table"
      rate=$(echo "$table" | tail -1 | awk -F'|' '{gsub(/ /, "", $8); print $8}')
      python3 - "$rate" <<'PY'
import sys, time, torch
tokens_per_s = float(sys.argv[1])
# bf16 matmul rate of this card, measured: 8192^3 GEMMs.
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3): a @ b
torch.cuda.synchronize()
start, reps = time.perf_counter(), 20
for _ in range(reps): a @ b
torch.cuda.synchronize()
peak = 2 * 8192**3 * reps / (time.perf_counter() - start)
# 1.5B geometry: 24 layers, C 2048, ffn 4C, head 65536 x C, head size 64; the time-mix's small
# low-rank matrices (w, a, v, g) are counted too.
L, C, V, N = 24, 2048, 65536, 64
low_rank = 2 * C * (96 + 96 + 64 + 256)
matmul_params = L * (4 * C * C + 2 * 4 * C * C + low_rank) + V * C
wkv_flops = L * (C // N) * N * N * 30  # per token: ~10 N^2 forward, ~20 N^2 backward per head
flops_per_token = 4 * matmul_params + wkv_flops
print(f"| bf16 matmul rate {peak / 1e12:.0f} TFLOP/s | {tokens_per_s:.0f} tokens/s | "
      f"{flops_per_token / 1e9:.2f} GFLOP/token | MFU {100 * tokens_per_s * flops_per_token / peak:.1f} % |")
PY
      ;;
    *) echo "unknown part '$part' (check, kernels, train, mfu)" >&2; exit 2 ;;
  esac
done
