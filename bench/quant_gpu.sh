#!/usr/bin/env bash
# The quantizer benchmark of bench/RESULTS.md, on the GPU machine, from the repository root:
#   bench/quant_gpu.sh BUILD_DIR [SIZES] [STEPS]     e.g. bench/quant_gpu.sh build-gpu "0.4b 1.5b" 4
# 1. checks the CUDA dequantization kernels against the CPU reference (quant_test);
# 2. times dequantization against the card's copy bandwidth (quant_bench);
# 3. trains each model size with state tuning and LoRA r64 on bf16, int8 and nf4 bases (ctx 1024,
#    micro_bsz 1, grad_cp) for STEPS steps and prints tokens/s of the last step, the CUDA
#    allocator's peak and the peak of nvidia-smi's memory.used while it ran.
set -euo pipefail
build=$1 sizes=${2:-"0.4b 1.5b"} steps=${3:-4}
peftkit="$build/bin/peftkit"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

"$build/tests/quant_test"
"$build/tests/wkv7_cpu_test" --gtest_filter="Wkv7Cuda*"
"$build/bench/wkv7_bench"
"$build/bench/quant_bench"

python3 -c "import numpy as np; np.save('$work/tokens.npy', np.random.default_rng(0).integers(1, 65536, 400000).astype('<u2'))"
echo
echo "| size | method | base | tokens/s (last step) | step time s | CUDA allocator peak GiB | nvidia-smi peak GiB | loss first → last |"
echo "|---|---|---|---|---|---|---|---|"
for size in $sizes; do
  "$peftkit" init-model --size "$size" --out "$work/model-$size.pth" --log-level warn
  for method in state lora; do
    for quant in none int8 nf4; do
      run="$work/$size-$method-$quant"
      mkdir -p "$run"
      {
        printf '[model]\npath = "%s"\n[data]\nformat = "numpy"\npath = "%s"\n' "$work/model-$size.pth" "$work/tokens.npy"
        printf '[peft]\nmethod = "%s"\n' "$method"
        [[ $method == lora ]] && printf '[peft.lora]\nr = 64\nalpha = 64\n'
        printf '[quant]\nmethod = "%s"\n' "$quant"
        printf '[train]\nctx_len = 1024\nmicro_bsz = 1\nepoch_steps = %s\nepoch_count = 1\nepoch_save = 0\n' "$steps"
        printf 'lr_init = 1e-4\nlr_final = 1e-4\nprecision = "bf16"\ngrad_cp = true\n[output]\ndir = "%s"\n' "$run/out"
      } >"$run/recipe.toml"
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$run/smi.log" &
      sampler=$!
      "$peftkit" train "$run/recipe.toml" --log-level warn >"$run/train.log" 2>&1 || { cat "$run/train.log"; kill $sampler; exit 1; }
      kill $sampler
      python3 - "$run" "$size" "$method" "$quant" <<'PY'
import json, sys
run, size, method, quant = sys.argv[1:]
lines = [json.loads(l) for l in open(f"{run}/out/metrics.jsonl")]
last = lines[-1]
smi = max(int(v) for v in open(f"{run}/smi.log").read().split() if v.strip().isdigit()) / 1024
step_tokens = last["tokens"] - (lines[-2]["tokens"] if len(lines) > 1 else 0)
step_s = step_tokens / last["tokens_per_s"]
print(f"| {size} | {method} | {quant if quant != 'none' else 'bf16'} | {last['tokens_per_s']:.0f} | {step_s:.2f} | "
      f"{max(l.get('peak_gpu_gib', 0) for l in lines):.2f} | {smi:.2f} | {lines[0]['loss']:.3f} → {last['loss']:.3f} |")
PY
    done
  done
done
