#!/usr/bin/env bash
# Formats the C++ and CUDA sources with the project's .clang-format (Google style, 100 columns).
#   scripts/format.sh          rewrites the files in place
#   scripts/format.sh --check  changes nothing; lists the files that differ and fails (CI runs this)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
format=${CLANG_FORMAT:-}
if [[ -z "$format" ]]; then
  for candidate in clang-format-14 clang-format; do
    command -v "$candidate" >/dev/null && { format=$candidate; break; }
  done
fi
[[ -n "$format" ]] || { echo "format: clang-format not found (scripts/setup.sh installs clang-format-14)" >&2; exit 1; }
# Every tracked or new (not ignored) source file.
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.cpp' '*.hpp' '*.h' '*.cu' '*.cuh')
if [[ "${1:-}" == "--check" ]]; then
  bad=()
  for file in "${files[@]}"; do
    [[ -f "$file" ]] || continue
    "$format" --style=file "$file" | cmp -s - "$file" || bad+=("$file")
  done
  if ((${#bad[@]})); then
    printf 'format: not formatted: %s\n' "${bad[@]}" >&2
    echo "format: ${#bad[@]} file(s) differ from .clang-format; run scripts/format.sh" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files follow .clang-format"
else
  "$format" --style=file -i "${files[@]}"
fi
