"""Seed corpora for the fuzz targets, written by PyTorch, NumPy and safetensors (independently of
the C++ readers), by peftkit itself (scripts/fuzz.sh runs it into PEFTKIT_WRITTEN), plus the
reproducers of issue 14's crashes, one folder per target.

  make_corpus.py OUT_DIR VOCAB_FILE RECIPES_DIR [PEFTKIT_WRITTEN]
"""
import collections
import io
import json
import os
import struct
import sys
import zipfile

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

out, vocab_file, recipes = sys.argv[1], sys.argv[2], sys.argv[3]
written = sys.argv[4] if len(sys.argv) > 4 else None


def put(target, name, data):
    os.makedirs(f"{out}/{target}", exist_ok=True)
    with open(f"{out}/{target}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def pth_with_pickle(pickle_bytes):
    """A .pth archive whose data.pkl is given (stored records, as torch writes them)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/data/0", bytes(64))
        z.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def text(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()


# .pth: real state dicts, and the reproducers (a dict containing itself, deep dicts and lists).
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
put("pth", "dict.pth", torch_bytes({"emb.weight": torch.randn(3, 4).bfloat16(), "ids": torch.arange(-3, 5),
                                    "flags": torch.tensor([True, False]), "scalar": torch.tensor(2.5)}))
put("pth", "nested-views.pth", torch_bytes({"model": {"w": base, "t": base.t()[1:3], "row": base[2]}}))
put("pth", "ordered.pth", torch_bytes(collections.OrderedDict(a=torch.ones(2, dtype=torch.float16))))
cycle = {"w": torch.ones(3)}
cycle["self"] = cycle
put("pth", "cycle.pth", torch_bytes(cycle))
put("pth", "deep-dicts.pth", pth_with_pickle(b"\x80\x02}" + (text("a") + b"}") * 20000 + b"s" * 20000 + b"."))
put("pth", "deep-lists.pth", pth_with_pickle(b"\x80\x02}" + text("a") + b"]" * 200000 + b"a" * 199999 + b"s."))

# safetensors: real files and the reproducers (keys named twice at every level, deep nesting).
put("safetensors", "ref.safetensors", safetensors_bytes({"a": torch.randn(2, 3), "b": torch.arange(4),
                                                         "h": torch.ones(2, dtype=torch.float16)},
                                                        metadata={"format": "pt"}))


def st(header):
    h = json.dumps(header) if not isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h.encode() + bytes(8)


put("safetensors", "inner-duplicate.safetensors",
    st('{"a":{"dtype":"F64","dtype":"BF16","shape":[1],"data_offsets":[0,8]}}'))
put("safetensors", "deep.safetensors", st('{"a":' + "[" * 50000 + "]" * 50000 + "}"))
put("safetensors", "overflow.safetensors",
    st('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}'))

# .npy: what NumPy writes, and the reproducers (a padded header, a shape past 64 bits).
for version, dtype in [((1, 0), "<u2"), ((2, 0), "<i4"), ((3, 0), "<i8")]:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, (np.arange(200) * 7 % 50).astype(dtype), version=version)
    put("npy", f"stream-{version[0]}-{dtype[1:]}.npy", buffer.getvalue())
buffer = io.BytesIO()
np.save(buffer, (np.arange(120) % 40).astype("<u2").reshape(6, 20))
put("npy", "rows.npy", buffer.getvalue())


def npy(header, data, version=1):
    head = header.encode()
    size = struct.pack("<H", len(head)) if version == 1 else struct.pack("<I", len(head))
    return b"\x93NUMPY" + bytes([version, 0]) + size + head + data


put("npy", "padded.npy", npy("{'descr': '<u2', 'fortran_order': False, 'shape': (10,), }" + " " * 60000 + "\n",
                             bytes(20)))
put("npy", "overflow.npy", npy("{'descr': '<u2', 'fortran_order': False, 'shape': (4, 1152921504606846978), }",
                               bytes(32)))

# binidx (the target's layout: 2 bytes of .bin length, the .bin, then the .idx).
def binidx(docs, dtype="<u2", code=8, pointers=None):
    tokens = np.concatenate([np.array(d, dtype=dtype) for d in docs]).tobytes()
    sizes = np.array([len(d) for d in docs], dtype="<i4")
    if pointers is None:
        pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]) * np.dtype(dtype).itemsize
    idx = (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, code, len(docs), len(docs) + 1) + sizes.tobytes() +
           np.array(pointers, dtype="<i8").tobytes() + np.arange(len(docs) + 1, dtype="<i8").tobytes())
    return struct.pack("<H", len(tokens)) + tokens + idx


docs = [[100 * d + k for k in range(3 + 4 * d)] + [0] for d in range(5)]
put("binidx", "u16", binidx(docs))
put("binidx", "i32", binidx(docs, "<i4", 4))
put("binidx", "negative-pointer", binidx(docs, pointers=[0, -64, 16, 40, 80]))

# jsonl: every line kind, and a deeply nested line.
put("jsonl", "kinds.jsonl", "\n".join(json.dumps(x) for x in [
    {"text": "Hello world!\n\n"}, {"prompt": "User: hi\n\nAssistant:", "response": " Hello!\n\n"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]}, {"text": ""}]) + "\n")
put("jsonl", "deep.jsonl", '{"text": "a", "x": ' + "[" * 30000 + "]" * 30000 + "}\n")

# TOML recipes: the shipped ones, and over-deep keys.
for name in sorted(os.listdir(recipes)):
    if name.endswith(".toml"):
        with open(f"{recipes}/{name}", "rb") as f:
            put("recipe", name, f.read())
put("recipe", "deep-key.toml", "[a" + ".b" * 50000 + "]\n")
put("recipe", "deep-array.toml", "x = " + "[" * 50000 + "]" * 50000 + "\n")

# The vocabulary: its first lines, and lines with every literal form.
with open(vocab_file, "rb") as f:
    lines = f.read().split(b"\n")
put("vocab", "head.txt", b"\n".join(lines[:400] + lines[-50:]) + b"\n")

# HF PEFT adapter configs.
lora = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["key"], "use_rslora": False,
        "modules_to_save": None, "alpha_pattern": {}, "rank_pattern": {}}
put("adapter_config", "lora.json", json.dumps(lora))
put("adapter_config", "miss.json", json.dumps({"peft_type": "MISS", "r": 2, "init_weights": "bat", "mini_r": 1}))
put("adapter_config", "pattern.json", json.dumps(dict(lora, alpha_pattern={"key": 8})))
put("adapter_config", "duplicate.json", '{"peft_type": "LORA", "r": 2, "r": 64, "lora_alpha": 4}')

# State files for a 2-layer model of 2 heads of 32.
put("state_file", "state.pth", torch_bytes({f"blocks.{i}.att.time_state": torch.randn(2, 32, 32) for i in range(2)}))
put("state_file", "wrong-shape.pth", torch_bytes({f"blocks.{i}.att.time_state": torch.randn(2, 16, 32)
                                                  for i in range(2)}))

# Pre-quantized weights ([quant] cache_file parts of one site) for nf4 and int8.
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])
rows, columns = 8, 16
put("prequantized_nf4", "site.safetensors", safetensors_bytes({
    "packed": torch.randint(0, 256, (rows * columns // 2,), dtype=torch.uint8), "codebook": NF4,
    "absmax": torch.rand(rows * columns // 64), "shape": torch.tensor([rows, columns]),
    "blocksize": torch.tensor(64), "dtype": torch.tensor(6)}))
put("prequantized_int8", "site.safetensors", safetensors_bytes({
    "q": torch.randint(-127, 128, (rows, columns), dtype=torch.int8), "scale": torch.rand(rows),
    "outlier_columns": torch.tensor([3]), "outliers": torch.randn(rows, 1).bfloat16(), "dtype": torch.tensor(15)}))
put("prequantized_int8", "column-outside.safetensors", safetensors_bytes({
    "q": torch.randint(-127, 128, (rows, columns), dtype=torch.int8), "scale": torch.rand(rows),
    "outlier_columns": torch.tensor([99]), "outliers": torch.randn(rows, 1).bfloat16(), "dtype": torch.tensor(15)}))
# What peftkit wrote: its model files, adapters, checkpoints, exports and pre-quantized caches.
if written and os.path.isdir(written):
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    for folder, _, files in os.walk(written):
        for name in files:
            path = os.path.join(folder, name)
            seed = os.path.relpath(path, written).replace(os.sep, "-")
            if name.endswith((".pth", ".ckpt")):
                put("pth", seed, read(path))
            if name in ("rwkv-0.pth", "state.pth"):
                put("state_file", seed, read(path))
            if name.endswith(".safetensors"):
                put("safetensors", seed, read(path))
            if name == "ai00.safetensors":
                put("state_file", seed, read(path))
            if name == "adapter_config.json":
                put("adapter_config", seed, read(path))
            if name.endswith(".toml"):
                put("recipe", seed, read(path))
            if name.startswith("cache-"):
                # One site's parts, under the names the quantizer's load() sees.
                from safetensors.torch import load_file
                quant = name[len("cache-"):-len(".safetensors")]
                tensors = load_file(path)
                site = "blocks.0.att.key.weight."
                parts = {k[len(site):]: v for k, v in tensors.items() if k.startswith(site)}
                put(f"prequantized_{quant}", "site-" + quant + ".safetensors", safetensors_bytes(parts))
print("corpora written to", out)
