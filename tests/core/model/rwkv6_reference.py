"""An independent RWKV-6 x060 forward in float64, written from spec rwkv-model §4 (not from the C++).

  rwkv6_reference.py DIR
reads DIR/init.pth (an fp32 x060 model written by peftkit), perturbs every tensor (the init has
many zeros that would hide bugs), shuffles the key order, and saves DIR/model.pth in bf16 as an
OrderedDict with torch.save. Then it computes the logits of the bf16 weights in float64 for
DIR/tokens (one id per line) and saves them as DIR/logits.pth; and again from random initial WKV
states, which it saves as DIR/state.pth in RWKV-PEFT's x060 layout (blocks.{i}.att.time_state,
[H, N, N] bf16, S[h][i = value][j = key] as its wkv6state CUDA kernel reads it), with those logits
in DIR/logits_state.pth.
"""
import collections
import random
import sys

import torch
import torch.nn.functional as F

d = sys.argv[1]
g = torch.Generator().manual_seed(17)
sd = torch.load(f"{d}/init.pth", weights_only=True)
for k, p in sd.items():
    sd[k] = p + 0.1 * torch.randn(p.shape, generator=g) * (p.float().std() + 0.02)
keys = list(sd)
random.Random(5).shuffle(keys)
model = collections.OrderedDict((k, sd[k].to(torch.bfloat16)) for k in keys)
torch.save(model, f"{d}/model.pth")

w = {k: v.double() for k, v in model.items()}
C = w["emb.weight"].shape[1]
L = max(int(k.split(".")[1]) for k in w if k.startswith("blocks.")) + 1
H, N = w["blocks.0.att.time_faaaa"].shape
tokens = torch.tensor([int(x) for x in open(f"{d}/tokens").read().split()])
T = len(tokens)


def ln(x, name, eps=1e-5):
    return F.layer_norm(x, (C,), w[name + ".weight"], w[name + ".bias"], eps)


states = {f"blocks.{l}.att.time_state": (0.5 * torch.randn(H, N, N, generator=g)).to(torch.bfloat16)
          for l in range(L)}
torch.save(states, f"{d}/state.pth")


def forward(initial_states):
    x = ln(w["emb.weight"][tokens], "blocks.0.ln0")  # [T, C]
    for l in range(L):
        p = f"blocks.{l}."
        A = lambda n: w[p + "att." + n]
        xa = ln(x, p + "ln1")
        xx = torch.cat([torch.zeros(1, C, dtype=torch.float64), xa[:-1]]) - xa
        xxx = xa + xx * A("time_maa_x").view(C)
        D = A("time_maa_w2").shape[1]
        m = torch.tanh(xxx @ A("time_maa_w1")).view(T, 5, D)
        mw, mk, mv, mr, mg = (m[:, i] @ A("time_maa_w2")[i] for i in range(5))
        xw = xa + xx * (A("time_maa_w").view(C) + mw)
        xk = xa + xx * (A("time_maa_k").view(C) + mk)
        xv = xa + xx * (A("time_maa_v").view(C) + mv)
        xr = xa + xx * (A("time_maa_r").view(C) + mr)
        xg = xa + xx * (A("time_maa_g").view(C) + mg)
        r = xr @ A("receptance.weight").T
        k = xk @ A("key.weight").T
        v = xv @ A("value.weight").T
        gate = F.silu(xg @ A("gate.weight").T)
        dec = torch.exp(-torch.exp(A("time_decay").view(C) + torch.tanh(xw @ A("time_decay_w1")) @ A("time_decay_w2")))
        u = A("time_faaaa")
        y = torch.zeros(T, C, dtype=torch.float64)
        for h in range(H):
            S = initial_states[l][h].double() if initial_states else torch.zeros(N, N, dtype=torch.float64)  # S[i = value][j = key]
            sl = slice(h * N, (h + 1) * N)
            for t in range(T):
                kt, vt, rt = k[t, sl], v[t, sl], r[t, sl]
                y[t, sl] = (S + vt[:, None] * (u[h] * kt)[None, :]) @ rt  # the state before the update
                S = S * dec[t, sl][None, :] + vt[:, None] * kt[None, :]
        y = F.group_norm(y, H, A("ln_x.weight"), A("ln_x.bias"), eps=64e-5)
        x = x + (y * gate) @ A("output.weight").T
        xf = ln(x, p + "ln2")
        xx = torch.cat([torch.zeros(1, C, dtype=torch.float64), xf[:-1]]) - xf
        kx = xf + xx * w[p + "ffn.time_maa_k"].view(C)
        rx = xf + xx * w[p + "ffn.time_maa_r"].view(C)
        kv = torch.relu(kx @ w[p + "ffn.key.weight"].T).square() @ w[p + "ffn.value.weight"].T
        x = x + torch.sigmoid(rx @ w[p + "ffn.receptance.weight"].T) * kv
    return ln(x, "ln_out") @ w["head.weight"].T


torch.save({"logits": forward(None)}, f"{d}/logits.pth")
torch.save({"logits": forward([states[f"blocks.{l}.att.time_state"] for l in range(L)])}, f"{d}/logits_state.pth")
