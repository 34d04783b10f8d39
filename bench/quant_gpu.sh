#!/usr/bin/env bash
# The quantizer benchmark of bench/RESULTS.md, on the GPU machine, from the repository root:
#   bench/quant_gpu.sh BUILD_DIR [SIZES] [STEPS]     e.g. bench/quant_gpu.sh build-gpu "0.4b 1.5b" 4
# 1. checks the CUDA dequantization kernels against the CPU reference (quant_test);
# 2. times dequantization against the card's copy bandwidth (quant_bench);
# 3. trains each model size with state tuning and LoRA r64 on bf16, int8 and nf4 bases (ctx 1024,
#    micro_bsz 1, grad_cp) for STEPS steps with bench/train_gpu.sh.
set -euo pipefail
build=$1 sizes=${2:-"0.4b 1.5b"} steps=${3:-4}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

"$build/tests/quant_test"
"$build/tests/kernels_test" --gtest_filter="*Cuda*"
"$build/bench/wkv7_bench"
"$build/bench/quant_bench"

echo
LORA_R=64 "$(dirname "$0")/train_gpu.sh" "$build" "$sizes" "state lora" "none int8 nf4" 1 1024 "$steps"
