#!/usr/bin/env bash
# The README's main command: set up, build, and run the quickstart job: create the built-in small
# model, describe it, let it generate, and resolve the quickstart recipe that trains it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
peftkit="${PEFTKIT_BUILD_DIR:-$root/build}/bin/peftkit"
out="$root/out/quickstart"
mkdir -p "$out"
set -x
"$peftkit" plugins
"$peftkit" init-model --layers 2 --embd 128 --seed 0 --out "$out/model.pth"
"$peftkit" inspect "$out/model.pth"
"$peftkit" generate --model "$out/model.pth" --prompt "Hello" --max-tokens 16
"$peftkit" recipe show "$root/recipes/quickstart.toml"
