#!/usr/bin/env bash
# The README's main command: set up, build, and run the quickstart job: create the built-in small
# model, train it on the shipped sample data (the loss goes down), and let it generate.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build="${PEFTKIT_BUILD_DIR:-$root/build}"
# Only what the job needs: the program and the plugins (not the test suite), and device code only
# for a GPU that is present, for its architecture alone. A build folder configured before (by
# scripts/test.sh, say) keeps its settings.
configure=()
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
  if [[ "$capability" =~ ^[0-9]+$ ]]; then
    configure+=(-DPEFTKIT_CUDA=AUTO -DCMAKE_CUDA_ARCHITECTURES="$capability")
  else
    configure+=(-DPEFTKIT_CUDA=OFF)
  fi
fi
PEFTKIT_BUILD_TARGETS="peftkit peftkit-plugins" "$root/scripts/build.sh" "${configure[@]}"
peftkit="$build/bin/peftkit"
out="$root/out/quickstart"
set -x
rm -rf "$out"
mkdir -p "$out"
"$peftkit" plugins
"$peftkit" init-model --layers 2 --embd 128 --seed 0 --out "$out/model.pth"
"$peftkit" inspect "$out/model.pth"
"$peftkit" train "$root/recipes/quickstart.toml"
"$peftkit" generate --model "$out/rwkv-2.pth" --prompt $'User: What is a prime number?\n\nAssistant:' \
  --max-tokens 40 --temperature 0 --stop-at-blank-line true
