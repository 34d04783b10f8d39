#!/usr/bin/env bash
# usage: dora_plugin_test.sh BUILD_DIR EXAMPLE_SOURCE_DIR TORCH_CMAKE_DIR PYTHON
# Builds examples/dora-plugin out of tree against the installed SDK, trains with it through a
# recipe (the loss must go down), merges and exports the saved adapter, and checks the merged
# weights against DoRA's formula computed by PyTorch from the files.
set -euo pipefail
build=$1 example=$2 torch_dir=$3 python=$4
source "$(dirname "${BASH_SOURCE[0]}")/install_and_build_example.sh" "$build" "$example" "$torch_dir"

peftkit() { "$work/prefix/bin/peftkit" "$@" --plugin-dir "$work/build"; }
peftkit plugins | grep -Eq '^peft +dora +1\.0\.0 +ok ' || { peftkit plugins; fail "the dora plugin is not listed as ok"; }

cd "$work"
peftkit init-model --layers 2 --embd 64 --vocab 300 --head-size 16 --dtype fp32 --seed 1 --out model.pth >/dev/null
"$python" -c "import numpy as np; np.save('tokens.npy', (np.arange(400) * 7 % 40).astype('<u2'))"
cat >dora.toml <<'TOML'
[model]
path = "model.pth"
[data]
format = "numpy"
path = "tokens.npy"
[peft]
method = "dora"
[peft.dora]
r = 4
alpha = 8
[train]
ctx_len = 16
micro_bsz = 2
epoch_steps = 10
epoch_count = 1
lr_init = 2e-2
lr_final = 2e-3
precision = "fp32"
[output]
dir = "out"
TOML
peftkit train dora.toml >train.log 2>&1 || { cat train.log; fail "training with the dora plugin"; }
grep -q "trainable parameters: 10368 in 36 tensors" train.log || { cat train.log; fail "wrong trainable count"; }
"$python" - <<'PY' || fail "the loss did not go down"
import json
losses = [json.loads(line)["loss"] for line in open("out/metrics.jsonl")]
assert len(losses) == 10 and losses[-1] < losses[0], losses
PY

peftkit merge --base model.pth --adapter out/rwkv-0.pth --output merged.pth >/dev/null || fail "merging the DoRA adapter"
peftkit export --base model.pth --adapter out/rwkv-0.pth --format hf-peft --output hf >/dev/null || fail "exporting"
"$python" - <<'PY' || fail "merged weights differ from DoRA's formula"
import json, torch
from safetensors.torch import load_file
base = torch.load("model.pth", weights_only=True)
adapter = torch.load("out/rwkv-0.pth", weights_only=True)
merged = torch.load("merged.pth", weights_only=True)
s = float(adapter["dora.alpha"]) / int(adapter["dora.r"])
for name in base:
    site = name[: -len(".weight")]
    if site + ".lora_A" not in adapter:
        assert torch.equal(merged[name], base[name]), name
        continue
    v = base[name].double() + s * adapter[site + ".lora_B"].double() @ adapter[site + ".lora_A"].double()
    want = adapter[site + ".lora_magnitude_vector"].double()[:, None] * v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)
    assert torch.allclose(merged[name].double(), want, rtol=1e-5, atol=1e-6), name
hf = load_file("hf/adapter_model.safetensors")
assert hf["base_model.model.blocks.1.ffn.key.lora_magnitude_vector"].shape == (256,)
assert json.load(open("hf/adapter_config.json"))["use_dora"] is True
PY
# Issue 16: inspect names DoRA with its settings; the HF folder with use_dora = true is imported by
# this plugin (no line of core knows DoRA) and merges to the same weights; the trained adapter
# mounts with no recipe beside it.
described=$(peftkit inspect out/rwkv-0.pth)
for line in '^kind: *DoRA adapter$' '^rank: *4$' '^alpha: *8$' '^recorded: *dora \(r = 4, alpha = 8.0'; do
  grep -Eq "$line" <<<"$described" || { echo "$described"; fail "inspect: no line $line"; }
done
described=$(peftkit inspect hf)
grep -q '^kind: *DoRA adapter (HF PEFT folder)$' <<<"$described" || { echo "$described"; fail "inspect hf"; }
peftkit merge --base model.pth --adapter hf --output merged-hf.pth >/dev/null || fail "merging the HF DoRA folder"
cp out/recipe.toml trained-recipe.toml && rm out/recipe.toml
peftkit merge --base model.pth --adapter out/rwkv-0.pth --output merged-alone.pth >merge.log 2>&1 ||
  { cat merge.log; fail "merging the adapter without its recipe"; }
cp trained-recipe.toml out/recipe.toml
"$python" - <<'PY' || fail "the HF DoRA folder or the recipe-less adapter merges to other weights"
import torch
merged = torch.load("merged.pth", weights_only=True)
for other in ["merged-hf.pth", "merged-alone.pth"]:
    got = torch.load(other, weights_only=True)
    for name, w in merged.items():
        assert torch.allclose(got[name], w, rtol=1e-6, atol=1e-7), (other, name)
PY
with_adapter=$(peftkit generate --model model.pth --adapter out/rwkv-0.pth --prompt a --max-tokens 12 --temperature 0 --log-level warn)
from_merged=$(peftkit generate --model merged.pth --prompt a --max-tokens 12 --temperature 0 --log-level warn)
[[ "$with_adapter" == "$from_merged" ]] || fail "generation with the adapter ($with_adapter) differs from the merged model ($from_merged)"

# A third-party method in `peftkit eval` and `peftkit compare`, beside an in-tree one.
peftkit eval --model model.pth --adapter out/rwkv-0.pth --data tokens.npy --format numpy --ctx-len 16 \
  --compare-with base --device cpu --json eval.json >eval.log 2>&1 || { cat eval.log; fail "eval with the DoRA adapter"; }
"$python" -c "import json; v = json.load(open('eval.json'))['variants']; assert len(v) == 2 and v[1]['loss'] < v[0]['loss'], v" ||
  fail "the DoRA adapter does not evaluate better than its base"
cat >compare.toml <<'TOML'
[compare]
output = "compare"
device = "cpu"
[budget]
steps = 3
evaluations = 1
[model]
path = "model.pth"
[data]
format = "numpy"
path = "tokens.npy"
eval_fraction = 0.2
[train]
ctx_len = 16
micro_bsz = 2
lr_init = 2e-2
lr_final = 2e-3
precision = "fp32"
[[run]]
name = "dora"
[run.peft]
method = "dora"
[run.peft.dora]
r = 4
alpha = 8
[[run]]
name = "lora"
[run.peft]
method = "lora"
[run.peft.lora]
r = 4
alpha = 8
TOML
peftkit compare compare.toml >compare.log 2>&1 || { cat compare.log; fail "compare with the DoRA plugin"; }
"$python" -c "
import json
r = json.load(open('compare/report.json'))
assert [v['name'] for v in r['variants']] == ['base', 'dora', 'lora'], r['variants']
assert r['variants'][1]['methods'] == ['dora'] and r['variants'][1]['trainable_parameters'] == 10368, r['variants'][1]
" || fail "the compare report lacks the DoRA run"

# Issue 18: the same plugin on an RWKV-6 (x060) model, with no change to it: it adapts x060's
# gate and channel-mix receptance too, trains, and its merge generates like the mounted adapter.
mkdir -p x060 && cd x060
peftkit init-model --arch x060 --layers 2 --embd 64 --vocab 300 --head-size 16 --dtype fp32 --seed 1 --out model.pth >/dev/null
sed -e 's|path = "tokens.npy"|path = "../tokens.npy"|' ../dora.toml >dora.toml
peftkit train dora.toml >train.log 2>&1 || { cat train.log; fail "training x060 with the dora plugin"; }
"$python" - <<'PY' || fail "x060: the loss did not go down or the gate was not adapted"
import json, torch
losses = [json.loads(line)["loss"] for line in open("out/metrics.jsonl")]
assert len(losses) == 10 and losses[-1] < losses[0], losses
adapter = torch.load("out/rwkv-0.pth", weights_only=True)
assert "blocks.1.att.gate.lora_A" in adapter and "blocks.0.ffn.receptance.lora_magnitude_vector" in adapter, list(adapter)
PY
peftkit merge --base model.pth --adapter out/rwkv-0.pth --output merged.pth >/dev/null || fail "x060: merging the DoRA adapter"
with_adapter=$(peftkit generate --model model.pth --adapter out/rwkv-0.pth --prompt a --max-tokens 12 --temperature 0 --log-level warn)
from_merged=$(peftkit generate --model merged.pth --prompt a --max-tokens 12 --temperature 0 --log-level warn)
[[ "$with_adapter" == "$from_merged" ]] || fail "x060: generation with the adapter ($with_adapter) differs from the merged model ($from_merged)"
cd ..
echo "1 passed, 0 failed"
