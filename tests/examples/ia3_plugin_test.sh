#!/usr/bin/env bash
# usage: ia3_plugin_test.sh BUILD_DIR PLUGIN_SOURCE_DIR TORCH_CMAKE_DIR PYTHON
# Issue 16: a plugin built out of tree against the installed SDK declares a file format of its own
# (ia3-text) and an import format (HF PEFT IA3 folders); inspect, generate --adapter, merge and
# export handle its files, and its trained adapter mounts with no recipe beside it (the record).
set -euo pipefail
build=$1 plugin=$2 torch_dir=$3 python=$4
source "$(dirname "${BASH_SOURCE[0]}")/install_and_build_example.sh" "$build" "$plugin" "$torch_dir"

peftkit() { "$work/prefix/bin/peftkit" "$@" --plugin-dir "$work/build"; }
listing=$(peftkit plugins)
grep -Eq '^peft +ia3 +1\.0\.0 +ok ' <<<"$listing" || { echo "$listing"; fail "the ia3 plugin is not listed as ok"; }
grep -q 'imports ia3-text: its own text format' <<<"$listing" || { echo "$listing"; fail "import formats not listed"; }

cd "$work"
peftkit init-model --layers 2 --embd 64 --vocab 300 --head-size 16 --dtype fp32 --seed 1 --out model.pth >/dev/null
"$python" -c "import numpy as np; np.save('tokens.npy', (np.arange(400) * 7 % 40).astype('<u2'))"
# RWKV-LM's init zeroes the output projections, which would leave every output scale without a
# gradient: perturb the matrices so that training moves them.
"$python" - <<'PY'
import torch
m = torch.load("model.pth", weights_only=True)
g = torch.Generator().manual_seed(0)
for v in m.values():
    if v.dim() == 2 and v.is_floating_point():
        v.add_(torch.randn(v.shape, generator=g) * 0.05)
torch.save(m, "model.pth")
PY
cat >ia3.toml <<'TOML'
[model]
path = "model.pth"
[data]
format = "numpy"
path = "tokens.npy"
[peft]
method = "ia3"
[train]
ctx_len = 16
micro_bsz = 2
epoch_steps = 10
epoch_count = 1
lr_init = 5e-2
lr_final = 5e-3
precision = "fp32"
[output]
dir = "out"
TOML
peftkit train ia3.toml >train.log 2>&1 || { cat train.log; fail "training with the ia3 plugin"; }
# Self-describing: the adapter alone, no recipe beside it.
mv out/recipe.toml trained-recipe.toml
adapter=out/rwkv-0.pth

described=$(peftkit inspect $adapter)
grep -q '^kind: *IA3 adapter$' <<<"$described" || { echo "$described"; fail "inspect does not name the IA3 adapter"; }
grep -q '^recorded: *ia3 (targets = \["att.key", "att.value", "ffn.value"\])' <<<"$described" ||
  { echo "$described"; fail "inspect does not show the recorded settings"; }

peftkit export --base model.pth --adapter $adapter --format hf-peft --output hf >/dev/null || fail "export hf-peft"
peftkit export --base model.pth --adapter $adapter --format ia3-text --output ia3.txt >/dev/null || fail "export ia3-text"
head -c 10 ia3.txt | grep -q '^ia3-text 1' || fail "ia3.txt lacks its header"
described=$(peftkit inspect hf)
grep -q '^kind: *IA3 adapter (HF PEFT folder)$' <<<"$described" || { echo "$described"; fail "inspect hf"; }
described=$(peftkit inspect ia3.txt)
grep -q '^kind: *IA3 adapter (ia3-text)$' <<<"$described" || { echo "$described"; fail "inspect ia3.txt"; }
for source in $adapter hf ia3.txt; do
  peftkit merge --base model.pth --adapter $source --output "merged-$(basename $source).pth" >/dev/null ||
    fail "merge from $source"
done
"$python" - <<'PY' || fail "merged weights differ from IA3's formula or between the three files"
import torch
base = torch.load("model.pth", weights_only=True)
adapter = torch.load("out/rwkv-0.pth", weights_only=True)
merged = {f: torch.load(f, weights_only=True) for f in ["merged-rwkv-0.pth.pth", "merged-hf.pth", "merged-ia3.txt.pth"]}
scaled = 0
for name, w in base.items():
    site = name[: -len(".weight")]
    want = w.double() * adapter[site + ".ia3_l"].double() if site + ".ia3_l" in adapter else w.double()
    scaled += site + ".ia3_l" in adapter
    for f, m in merged.items():
        assert torch.allclose(m[name].double(), want, rtol=1e-6, atol=1e-7), (f, name)
assert scaled == 6, scaled
assert any(not torch.equal(adapter[k], torch.ones_like(adapter[k])) for k in adapter if k.endswith(".ia3_l"))
PY
from_merged=$(peftkit generate --model merged-rwkv-0.pth.pth --prompt a --max-tokens 12 --temperature 0 --log-level warn)
for source in "--adapter $adapter" "--adapter hf" "--adapter ia3.txt" "--ia3 ia3.txt"; do
  text=$(peftkit generate --model model.pth $source --prompt a --max-tokens 12 --temperature 0 --log-level warn) ||
    fail "generate $source"
  [[ "$text" == "$from_merged" ]] || fail "generate $source gave '$text', the merged model '$from_merged'"
done
# A method alias checks what the plugins recognise.
if peftkit generate --model model.pth --state ia3.txt --prompt a >alias.log 2>&1; then fail "--state took an IA3 file"; fi
grep -q "holds no state adapter" alias.log || { cat alias.log; fail "wrong message for --state with an IA3 file"; }
# A file no plugin reads is refused naming what is installed.
echo "hello" >plain.txt
if peftkit generate --model model.pth --adapter plain.txt --prompt a >plain.log 2>&1; then fail "plain text accepted"; fi
grep -q "plain.txt: neither a tensor file (.pth, .safetensors) nor a format an installed plugin reads (installed: .*ia3 (hf-peft IA3, ia3-text)" plain.log ||
  { cat plain.log; fail "wrong message for a file no plugin reads"; }
echo "1 passed, 0 failed"
