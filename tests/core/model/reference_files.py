"""What the float64 reference scripts (rwkv7_reference.py, rwkv6_reference.py) share: the model
file they write with torch.save, the tokens they read and the state file they write."""
import collections
import random

import torch
import torch.nn.functional as F


def perturbed_model(d, generator, shuffle_seed, add=None):
    """DIR/init.pth with every tensor perturbed (the init's zeros would hide bugs), `add(sd)` applied,
    the keys shuffled, saved in bf16 as an OrderedDict at DIR/model.pth; returns its tensors in
    float64."""
    sd = torch.load(f"{d}/init.pth", weights_only=True)
    for k, p in sd.items():
        sd[k] = p + 0.1 * torch.randn(p.shape, generator=generator) * (p.float().std() + 0.02)
    if add:
        add(sd)
    keys = list(sd)
    random.Random(shuffle_seed).shuffle(keys)
    model = collections.OrderedDict((k, sd[k].to(torch.bfloat16)) for k in keys)
    torch.save(model, f"{d}/model.pth")
    return {k: v.double() for k, v in model.items()}


def read_tokens(d):
    return torch.tensor([int(x) for x in open(f"{d}/tokens").read().split()])


def layer_count(w):
    return max(int(k.split(".")[1]) for k in w if k.startswith("blocks.")) + 1


def random_states(d, generator, L, H, N):
    """Random initial WKV states in RWKV-PEFT's layout, saved as DIR/state.pth; returned per layer."""
    states = {f"blocks.{l}.att.time_state": (0.5 * torch.randn(H, N, N, generator=generator)).to(torch.bfloat16)
              for l in range(L)}
    torch.save(states, f"{d}/state.pth")
    return [states[f"blocks.{l}.att.time_state"] for l in range(L)]


def layer_norm(w, C):
    return lambda x, name, eps=1e-5: F.layer_norm(x, (C,), w[name + ".weight"], w[name + ".bias"], eps)
