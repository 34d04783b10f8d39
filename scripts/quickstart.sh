#!/usr/bin/env bash
# The README's main command: set up, build, and run the quickstart job on the shipped sample data.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
peftkit="${PEFTKIT_BUILD_DIR:-$root/build}/bin/peftkit"
"$peftkit" plugins
echo
"$peftkit" recipe show "$root/recipes/quickstart.toml"
