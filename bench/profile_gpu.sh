#!/usr/bin/env bash
# Where the GPU time of `peftkit train` goes: every CUDA kernel of a short eager run (no CUDA
# graphs) timed by Nsight Compute, summed by name, largest first (the recipe is train_gpu.sh's).
#   bench/profile_gpu.sh BUILD_DIR SIZE METHOD MICRO_BSZ CTX STEPS [TOP]
#   e.g. bench/profile_gpu.sh build-gpu 1.5b lora 8 1024 1 25
# ncu runs the kernels one at a time at the card's normal clocks without flushing caches, so the
# sum is the GPU's busy time without overlap or launch gaps: a lower bound on the step time.
set -euo pipefail
build=$1 size=$2 method=$3 bsz=$4 ctx=$5 steps=$6 top=${7:-25}
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
[[ -n $ncu ]] || { echo "no ncu on this machine" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# train_gpu.sh writes the recipe and runs it once; KEEP_RUN leaves the folder for the profile.
CUDA_GRAPHS=false KEEP_RUN="$work" "$(dirname "$0")/train_gpu.sh" "$build" "$size" "$method" none "$bsz" "$ctx" "$steps" >/dev/null
recipe=$(ls "$work"/*/recipe.toml | head -1)
rm -rf "$(dirname "$recipe")/out"
"$ncu" --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv --page raw --print-units base \
  --log-file "$work/kernels.csv" "$build/bin/peftkit" train "$recipe" --log-level warn >/dev/null
python3 - "$work/kernels.csv" "$top" <<'PY'
import csv, collections, sys
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
rows = list(csv.DictReader(lines[start:]))
times, calls = collections.Counter(), collections.Counter()
for r in rows:
    value = r.get("gpu__time_duration.sum", "").replace(",", "")
    try:
        t = float(value)
    except ValueError:
        continue  # the units row
    name = r["Kernel Name"].split("(")[0][:80]
    times[name] += t
    calls[name] += 1
total = sum(times.values())
scale = 1e6  # base units: nanoseconds
print("| kernel | calls | total ms | share |\n|---|---|---|---|")
for name, t in times.most_common(int(sys.argv[2])):
    print(f"| {name} | {calls[name]} | {t / scale:.1f} | {100 * t / total:.1f} % |")
print(f"| all kernels | {sum(calls.values())} | {total / scale:.1f} | 100 % |")
PY
