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
import sys

import torch
import torch.nn.functional as F

from reference_files import layer_count, layer_norm, perturbed_model, random_states, read_tokens

d = sys.argv[1]
g = torch.Generator().manual_seed(17)
w = perturbed_model(d, g, shuffle_seed=5)
C = w["emb.weight"].shape[1]
L = layer_count(w)
H, N = w["blocks.0.att.time_faaaa"].shape
tokens = read_tokens(d)
T = len(tokens)
ln = layer_norm(w, C)
states = random_states(d, g, L, H, N)


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
torch.save({"logits": forward(states)}, f"{d}/logits_state.pth")
