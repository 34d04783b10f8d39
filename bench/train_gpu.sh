#!/usr/bin/env bash
# `peftkit train` timed on the GPU machine, one run per combination, printed as a table:
#   bench/train_gpu.sh BUILD_DIR SIZES METHODS BASES MICRO_BSZ CTX STEPS
#   e.g. bench/train_gpu.sh build-gpu "0.1b" "full state lora pissa miss" "none" "1 8" 1024 6
# SIZES: peftkit init-model --size values (of the architecture ARCH, x070 unless set); METHODS:
# full (no PEFT), state, lora (r 32 alpha 32, or r 64 when LORA_R=64), pissa (r 32), miss (r 64,
# balance); BASES: none, int8, nf4. Random tokens, bf16, grad_cp on unless GRAD_CP=false (with
# grad_cp_keep_wkv = KEEP_WKV when set), CUDA
# graphs on unless CUDA_GRAPHS=false, segments of CHUNK_CTX tokens when set (the ctx column then reads
# CTX/CHUNK_CTX), [train] embedding_on_host = EMB_ON_HOST when set (else the recipe default). KEEP_RUN=DIR keeps the
# runs there (and reuses a model made there before); RUN_TAG tells runs of one combination apart.
# Reports tokens/s and step time (median over the steps after the first two), the CUDA
# allocator's peak and reserved peak, the device's use at a step's end (cudaMemGetInfo: what
# nvidia-smi sees beyond the allocator), the peak of nvidia-smi's memory.used sampled every 100 ms,
# and the time from starting the command to the first optimizer step's metrics line.
set -euo pipefail
build=$1 sizes=$2 methods=$3 bases=$4 batches=$5 ctx=$6 steps=$7
peftkit="$build/bin/peftkit"
embedding_line=""
[[ -z ${EMB_ON_HOST:-} ]] || embedding_line="embedding_on_host = $EMB_ON_HOST"$'\n'
keep_wkv_line=""
[[ -z ${KEEP_WKV:-} ]] || keep_wkv_line="grad_cp_keep_wkv = $KEEP_WKV"$'\n'
# KEEP_RUN=DIR: work there and leave the runs (recipes, logs) behind.
if [[ -n ${KEEP_RUN:-} ]]; then
  work=$KEEP_RUN
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
python3 -c "import numpy as np; np.save('$work/tokens.npy', np.random.default_rng(0).integers(1, 65536, 2000000).astype('<u2'))"
echo "| size | method | base | micro_bsz | ctx | CUDA graphs | tokens/s | step s | CUDA allocator peak GiB | allocator reserved peak GiB | device used at a step end GiB | nvidia-smi peak GiB | start to first step s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for size in $sizes; do
  [[ -s $work/model-$size.pth ]] ||
    "$peftkit" init-model --arch "${ARCH:-x070}" --size "$size" --out "$work/model-$size.pth" --log-level warn
  for method in $methods; do
    for base in $bases; do
      for bsz in $batches; do
        run="$work/$size-$method-$base-$bsz${RUN_TAG:+-$RUN_TAG}"
        mkdir -p "$run"
        {
          printf '[model]\npath = "%s"\n[data]\nformat = "numpy"\npath = "%s"\n' "$work/model-$size.pth" "$work/tokens.npy"
          case $method in
            full) printf '[peft]\nmethod = "none"\n' ;;
            lora) printf '[peft]\nmethod = "lora"\n[peft.lora]\nr = %s\nalpha = %s\n' "${LORA_R:-32}" "${LORA_R:-32}" ;;
            pissa) printf '[peft]\nmethod = "pissa"\n[peft.pissa]\nr = 32\nalpha = 32\n' ;;
            miss) printf '[peft]\nmethod = "miss"\n[peft.miss]\nr = 64\n' ;;
            *) printf '[peft]\nmethod = "%s"\n' "$method" ;;
          esac
          printf '[quant]\nmethod = "%s"\n' "$base"
          printf '[train]\nctx_len = %s\nmicro_bsz = %s\nepoch_steps = %s\nepoch_count = 1\nepoch_save = 0\n' "$ctx" "$bsz" "$steps"
          printf 'lr_init = 1e-5\nlr_final = 1e-5\nprecision = "bf16"\ngrad_cp = %s\ncuda_graphs = %s\nchunk_ctx = %s\n%s%s[output]\ndir = "%s"\n' "${GRAD_CP:-true}" "${CUDA_GRAPHS:-true}" "${CHUNK_CTX:-0}" "$embedding_line" "$keep_wkv_line" "$run/out"
        } >"$run/recipe.toml"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$run/smi.log" &
        sampler=$!
        start=$(date +%s.%N)
        "$peftkit" train "$run/recipe.toml" --log-level warn >"$run/train.log" 2>&1 &
        trainer=$!
        first=""
        while kill -0 $trainer 2>/dev/null; do
          if [[ -z $first && -s $run/out/metrics.jsonl ]]; then first=$(date +%s.%N); fi
          sleep 0.05
        done
        wait $trainer || { cat "$run/train.log"; kill $sampler; exit 1; }
        kill $sampler
        [[ -n $first ]] || first=$(date +%s.%N)
        python3 - "$run" "$size" "$method" "$base" "$bsz" "$ctx${CHUNK_CTX:+/$CHUNK_CTX}" "$start" "$first" <<'PY'
import json, statistics, sys
run, size, method, base, bsz, ctx, start, first = sys.argv[1:]
lines = [json.loads(l) for l in open(f"{run}/out/metrics.jsonl")]
steady = lines[2:] or lines
rate = statistics.median(l["tokens_per_s"] for l in steady)
previous = {l["step"]: l["tokens"] for l in lines}
step_s = statistics.median((l["tokens"] - previous.get(l["step"] - 1, 0)) / l["tokens_per_s"] for l in steady)
smi = max(int(v) for v in open(f"{run}/smi.log").read().split() if v.strip().isdigit()) / 1024
peak = max(l.get("peak_gpu_gib", 0) for l in lines)
reserved = max(l.get("peak_gpu_reserved_gib", 0) for l in lines)
device_used = max(l.get("gpu_device_used_gib", 0) for l in lines)
graphed = sum(1 for l in steady if l.get("cuda_graph")) == len(steady)
print(f"| {size} | {method} | {'bf16' if base == 'none' else base} | {bsz} | {ctx} | {'yes' if graphed else 'no'} | {rate:.0f} | {step_s:.3f} | "
      f"{peak:.2f} | {reserved:.2f} | {device_used:.2f} | {smi:.2f} | {float(first) - float(start):.1f} |")
PY
      done
    done
  done
done
