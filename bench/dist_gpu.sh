#!/usr/bin/env bash
# Data-parallel training on the GPU machine: each way of running several processes against the
# plain one-process run of the same global batch (per-step losses and the saved tensors), and
# whether CUDA graphs still capture the steps. Prints a table for bench/RESULTS.md.
#   bench/dist_gpu.sh BUILD_DIR
# Runs: plain (1 process, accumulate 2); NCCL with 1 rank under `launch` (accumulate 2); NCCL with
# 2 ranks on GPU 0 (NCCL may refuse two ranks on one GPU: its message is recorded); Gloo on CUDA
# tensors with 2 ranks on GPU 0; and, with two GPUs or more, NCCL with 2 ranks on 2 GPUs.
set -uo pipefail
build=$1
bin=$build/bin/peftkit
export NCCL_NVLS_ENABLE=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$bin" init-model --layers 4 --embd 256 --head-size 64 --vocab 4096 --seed 1 \
  --out "$work/model.pth" >/dev/null
python3 -c "import numpy as np; r = np.random.default_rng(0); \
np.save('$work/tokens.npy', (np.arange(200000) * 7 % 300 + r.integers(0, 5, 200000)).astype('<u2'))"

# recipe NAME DEVICE BACKEND ACCUMULATE
recipe() {
  cat >"$work/$1.toml" <<TOML
[model]
path = "$work/model.pth"
[data]
format = "numpy"
path = "$work/tokens.npy"
[train]
ctx_len = 256
micro_bsz = 4
accumulate_grad_batches = $4
epoch_steps = 30
epoch_count = 1
lr_init = 1e-3
lr_final = 1e-3
warmup_steps = 0
precision = "fp32"
cuda_graphs = true
seed = 3
[run]
device = "$2"
backend = "$3"
collective_timeout_s = 120
[output]
dir = "$work/$1"
TOML
}

# compare NAME: the largest relative difference of its per-step losses and of its saved tensors
# from the plain run's, its CUDA-graph steps and its median tokens/s.
compare() {
  python3 - "$work" "$1" <<'PY'
import json, sys, statistics, torch
work, name = sys.argv[1], sys.argv[2]
def metrics(n):
    return [json.loads(l) for l in open(f"{work}/{n}/metrics.jsonl")]
a, b = metrics("plain"), metrics(name)
loss = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
ta = torch.load(f"{work}/plain/rwkv-0.pth", map_location="cpu")
tb = torch.load(f"{work}/{name}/rwkv-0.pth", map_location="cpu")
scale = max(t.double().abs().max().item() for t in ta.values())
weights = max((ta[k].double() - tb[k].double()).abs().max().item() for k in ta) / scale
graphed = sum(1 for x in b if x.get("cuda_graph"))
rate = statistics.median(x["tokens_per_s"] for x in b[2:])
print(f"{len(b)} | {loss:.1e} | {weights:.1e} | {graphed}/{len(b)} | {rate:,.0f}")
PY
}

run() {  # NAME PROCESSES BACKEND DEVICE ACCUMULATE
  recipe "$1" "$4" "$3" "$5"
  local port=$((29500 + RANDOM % 1000)) status
  if [ "$2" = 0 ]; then
    "$bin" train "$work/$1.toml" >"$work/$1.log" 2>&1
  else
    "$bin" launch --nproc "$2" --master-port $port -- train "$work/$1.toml" >"$work/$1.log" 2>&1
  fi
  status=$?
  if [ $status = 0 ]; then
    echo "| $1 | ${2/#0/1 (plain)} | $3 | $4 | 0 | $(compare "$1") |"
  else
    echo "| $1 | $2 | $3 | $4 | $status | $(grep -m1 -E 'error|Error' "$work/$1.log" | cut -c1-600) |||||"
  fi
}

echo "| run | processes | backend | device | exit | steps | max rel. loss diff | max rel. weight diff | CUDA-graph steps | median tokens/s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
run plain 0 auto cuda 2
run nccl-1 1 nccl cuda 2
run nccl-2-one-gpu 2 nccl cuda:0 1
run gloo-2-one-gpu 2 gloo cuda:0 1
if [ "$gpus" -ge 2 ]; then run nccl-2-gpus 2 nccl cuda 1; fi
