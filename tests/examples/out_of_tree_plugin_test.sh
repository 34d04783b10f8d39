#!/usr/bin/env bash
# usage: out_of_tree_plugin_test.sh BUILD_DIR EXAMPLE_SOURCE_DIR TORCH_CMAKE_DIR
set -euo pipefail
build=$1 example=$2 torch_dir=$3
source "$(dirname "${BASH_SOURCE[0]}")/install_and_build_example.sh" "$build" "$example" "$torch_dir"

peftkit="$work/prefix/bin/peftkit"
listing=$("$peftkit" plugins --plugin-dir "$work/build")
echo "$listing"
grep -Eq '^dataset +token-lines +1\.0\.0 +ok ' <<<"$listing" || fail "the example plugin is not listed as ok"
# The installed host finds its own plugins in <prefix>/lib/peftkit/plugins.
grep -Eq '^dataset +numpy +[0-9.]+ +ok ' <<<"$listing" || fail "the installed numpy plugin is not listed"

cat >"$work/recipe.toml" <<'TOML'
[model]
path = "model.pth"
[data]
format = "token-lines"
path = "ids.txt"
[data.token-lines]
skip_empty_lines = false
TOML
shown=$("$peftkit" recipe show "$work/recipe.toml" --plugin-dir "$work/build")
grep -q 'skip_empty_lines = false  # recipe' <<<"$shown" || { echo "$shown"; fail "recipe table not validated by the plugin"; }
if "$peftkit" recipe check "$work/recipe.toml" --plugin-dir "$work/build" --set data.token-lines.skip_empty_line=1 2>"$work/err"; then
  fail "an unknown plugin key was accepted"
fi
grep -q "unknown key 'skip_empty_line' in \[data.token-lines\]; did you mean 'skip_empty_lines'?" "$work/err" ||
  { cat "$work/err"; fail "wrong message for an unknown plugin key"; }

# A third-party dataset plugin serves `peftkit eval` as it serves training: 3 lines of 4 ids are
# 3 documents with 3 counted targets each (an untrained model's loss is about ln(vocab)).
"$peftkit" init-model --layers 1 --embd 64 --vocab 300 --head-size 16 --seed 1 --out "$work/model.pth" >/dev/null
printf '1 2 3 4\n\n5 6 7 8\n9 10 11 12\n' >"$work/ids.txt"
"$peftkit" eval --model "$work/model.pth" --data "$work/ids.txt" --format token-lines --plugin-dir "$work/build" \
  --set data.token-lines.skip_empty_lines=true --device cpu --json "$work/eval.json" >"$work/eval.log" 2>&1 ||
  { cat "$work/eval.log"; fail "eval with the third-party dataset plugin"; }
grep -q '"tokens": 9' "$work/eval.json" && grep -q '"documents": 3' "$work/eval.json" ||
  { cat "$work/eval.json"; fail "eval counted the wrong targets"; }
echo "1 passed, 0 failed"
