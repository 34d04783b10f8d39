"""An independent RWKV-7 x070 forward in float64, written from spec rwkv-model §1 (not from the C++).

  rwkv7_reference.py DIR
reads DIR/init.pth (an fp32 model written by peftkit), perturbs every tensor (the init has many
zeros that would hide bugs), adds the unused layer-0 v0/v1/v2, shuffles the key order, and saves
DIR/model.pth in bf16 as an OrderedDict with torch.save. Then it computes the logits of the
bf16 weights in float64 for DIR/tokens (one id per line) and saves them as DIR/logits.pth; and
again from random initial WKV states, which it saves as DIR/state.pth in RWKV-PEFT's layout
(blocks.{i}.att.time_state, [H, N, N] bf16, value-major), with those logits in DIR/logits_state.pth.
"""
import sys

import torch
import torch.nn.functional as F

from reference_files import layer_count, layer_norm, perturbed_model, random_states, read_tokens

d = sys.argv[1]
g = torch.Generator().manual_seed(7)


def add_layer0_value_lora(sd):
    C = sd["emb.weight"].shape[1]
    sd["blocks.0.att.v0"] = torch.randn(1, 1, C, generator=g)
    sd["blocks.0.att.v1"] = torch.randn(C, sd["blocks.1.att.v1"].shape[1], generator=g)
    sd["blocks.0.att.v2"] = torch.randn(sd["blocks.1.att.v1"].shape[1], C, generator=g)


w = perturbed_model(d, g, shuffle_seed=3, add=add_layer0_value_lora)
C = w["emb.weight"].shape[1]
L = layer_count(w)
H, N = w["blocks.0.att.r_k"].shape
tokens = read_tokens(d)
T = len(tokens)
ln = layer_norm(w, C)
states = random_states(d, g, L, H, N)


def forward(initial_states):
    x = ln(w["emb.weight"][tokens], "blocks.0.ln0")  # [T, C]
    v_first = None
    for l in range(L):
        p = f"blocks.{l}."
        a_ = lambda n: w[p + "att." + n]
        xa = ln(x, p + "ln1")
        prev = torch.cat([torch.zeros(1, C, dtype=torch.float64), xa[:-1]])
        xx = prev - xa
        xr, xw, xk, xv, xa_, xg = (xa + xx * a_(n).view(C) for n in ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"])
        r = xr @ a_("receptance.weight").T
        wlog = -F.softplus(-(a_("w0").view(C) + torch.tanh(xw @ a_("w1")) @ a_("w2"))) - 0.5
        k = xk @ a_("key.weight").T
        v = xv @ a_("value.weight").T
        if l == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(a_("v0").view(C) + (xv @ a_("v1")) @ a_("v2"))
        a = torch.sigmoid(a_("a0").view(C) + (xa_ @ a_("a1")) @ a_("a2"))
        gate = torch.sigmoid(xg @ a_("g1")) @ a_("g2")
        kk = F.normalize((k * a_("k_k").view(C)).view(T, H, N), dim=-1, p=2.0).view(T, C)
        k = k * (1 + (a - 1) * a_("k_a").view(C))
        y = torch.zeros(T, C, dtype=torch.float64)
        for h in range(H):
            S = initial_states[l][h].double() if initial_states else torch.zeros(N, N, dtype=torch.float64)  # S[i = value][j = key]
            sl = slice(h * N, (h + 1) * N)
            for t in range(T):
                dec = torch.exp(-torch.exp(wlog[t, sl]))
                ain, bin_ = -kk[t, sl], kk[t, sl] * a[t, sl]
                sa = S @ ain
                S = S * dec[None, :] + sa[:, None] * bin_[None, :] + v[t, sl][:, None] * k[t, sl][None, :]
                y[t, sl] = S @ r[t, sl]
        y = F.group_norm(y, H, a_("ln_x.weight"), a_("ln_x.bias"), eps=64e-5)
        y = y + ((r * k * a_("r_k").view(C)).view(T, H, N).sum(-1, keepdim=True) * v.view(T, H, N)).view(T, C)
        x = x + (y * gate) @ a_("output.weight").T
        xf = ln(x, p + "ln2")
        prev = torch.cat([torch.zeros(1, C, dtype=torch.float64), xf[:-1]])
        kx = xf + (prev - xf) * w[p + "ffn.x_k"].view(C)
        x = x + torch.relu(kx @ w[p + "ffn.key.weight"].T).square() @ w[p + "ffn.value.weight"].T
    return ln(x, "ln_out") @ w["head.weight"].T


torch.save({"logits": forward(None)}, f"{d}/logits.pth")
torch.save({"logits": forward(states)}, f"{d}/logits_state.pth")
