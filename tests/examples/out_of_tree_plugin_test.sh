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

# Issue 16: the optional writer interface, proved out of tree. Any reader converts into token-lines
# (the in-tree text and dummy plugins too) and token-lines converts into binidx; the ids survive.
cd "$work"
printf 'first document\n\nsecond one\n' >docs.txt
"$peftkit" convert --from text --to token-lines --input docs.txt --output ids-from-text.txt --plugin-dir build \
  --set 'data.text.separator="\n\n"' >convert.log 2>&1 || { cat convert.log; fail "convert text -> token-lines"; }
grep -q "ids-from-text.txt: 2 documents" convert.log || { cat convert.log; fail "convert did not report 2 documents"; }
[[ $(wc -l <ids-from-text.txt) == 2 ]] || { cat ids-from-text.txt; fail "expected 2 lines of ids"; }
"$peftkit" convert --from token-lines --to binidx --input ids-from-text.txt --output docs --plugin-dir build \
  >>convert.log 2>&1 || { cat convert.log; fail "convert token-lines -> binidx"; }
"$peftkit" convert --from binidx --to token-lines --input docs --output round-trip.txt --plugin-dir build \
  >>convert.log 2>&1 || { cat convert.log; fail "convert binidx -> token-lines"; }
# binidx adds the end token 0 to each document; otherwise the ids are the same.
sed 's/$/ 0/' ids-from-text.txt | sed 's/ 0 0$/ 0/' | cmp - round-trip.txt || { paste ids-from-text.txt round-trip.txt; fail "ids changed on the way"; }
"$peftkit" convert --from dummy --to token-lines --input - --output dummy.txt --plugin-dir build \
  --set data.dummy.count=3 --set data.dummy.length=5 >>convert.log 2>&1 || { cat convert.log; fail "convert dummy"; }
[[ $(wc -l <dummy.txt) == 3 && $(head -1 dummy.txt | wc -w) == 5 ]] || { cat dummy.txt; fail "dummy: expected 3 lines of 5 ids"; }
# A plugin that only reads is refused as a target, naming those that write.
if "$peftkit" convert --from jsonl --to numpy --input docs.txt --output x --plugin-dir build 2>err.txt; then
  fail "convert to a read-only format succeeded"
fi
grep -q "the numpy plugin reads its format but does not write it (plugins that write: binidx, token-lines)" err.txt ||
  { cat err.txt; fail "wrong message for a read-only target"; }
echo "1 passed, 0 failed"
