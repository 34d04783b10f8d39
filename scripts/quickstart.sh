#!/usr/bin/env bash
# The README's main command: set up, build, and run the quickstart job: create the built-in small
# model, train it on the shipped sample data (the loss goes down), and let it generate.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
peftkit="${PEFTKIT_BUILD_DIR:-$root/build}/bin/peftkit"
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
