#!/usr/bin/env bash
# peftkit compare on a GPU: the quickstart's model trained there, then recipes/compare.toml (state
# vs LoRA vs PiSSA vs MiSS) with device "auto" (= the GPU), as a user runs it.
#   bench/compare_gpu.sh BUILD_DIR
# Prints the report's table; every number it prints that goes into bench/RESULTS.md is measured here.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
peftkit="${1:-$root/build}/bin/peftkit"
rm -rf "$root/out/quickstart" "$root/out/compare"
mkdir -p "$root/out/quickstart"
"$peftkit" init-model --layers 2 --embd 128 --seed 0 --out "$root/out/quickstart/model.pth"
"$peftkit" train "$root/recipes/quickstart.toml" --log-level warn
time "$peftkit" compare "$root/recipes/compare.toml" --log-level warn
