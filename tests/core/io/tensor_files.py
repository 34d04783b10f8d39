"""Independent writer and checker for tensor_io_test (uses PyTorch and safetensors themselves).

  tensor_files.py write DIR   writes the fixtures below into DIR
  tensor_files.py check DIR   checks that the files the C++ side wrote into DIR/out equal them
"""
import collections
import os
import sys
import zipfile

import torch
from safetensors.torch import load_file, save_file


def reference():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    return {
        "emb.weight": r(7, 5).to(torch.bfloat16),
        "blocks.0.att.x_r": r(1, 1, 5).to(torch.float16),
        "blocks.0.att.r_k": r(2, 3),
        "blocks.0.ln1.weight": r(5).double(),
        "blocks.1.att.key.weight": r(5, 5).to(torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(-3, 9, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
    }


def write(d):
    ref = reference()
    torch.save(ref, f"{d}/dict.pth")
    torch.save(collections.OrderedDict(ref), f"{d}/ordered.pth")
    # A nested dict with views that share one storage (a transposed slice, an offset row).
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"model": {"blocks.0.w": base, "view.t": base.t()[1:4], "view.row": base[2]}},
               f"{d}/nested.pth")
    save_file({k: v.contiguous() for k, v in ref.items()}, f"{d}/ref.safetensors",
              metadata={"format": "pt"})
    # A pickle that names a global other than tensors and dicts: must be refused unread.
    torch.save({"a": torch.ones(1), "payload": os.system}, f"{d}/evil.pth")
    # Issue 14 item 1: a dict that contains itself, with a real tensor inside the loop.
    cycle = {"w": torch.ones(3)}
    cycle["self"] = cycle
    torch.save(cycle, f"{d}/cycle.pth")
    # The same archive in zip64 form throughout: every entry's sizes and offsets and the end of
    # the directory in zip64 records (as torch.save writes files over 4 GiB).
    limits = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP64_LIMIT = zipfile.ZIP_FILECOUNT_LIMIT = 0
    try:
        with zipfile.ZipFile(f"{d}/dict.pth") as src, \
                zipfile.ZipFile(f"{d}/zip64.pth", "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
    with open(f"{d}/zip64.pth", "rb") as f:
        assert b"PK\x06\x06" in f.read(), "no zip64 end-of-directory record"
    # A storage record shorter than its tensor needs.
    with zipfile.ZipFile(f"{d}/dict.pth") as src, zipfile.ZipFile(f"{d}/short.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                data = data[: len(data) // 2]
            dst.writestr(info, data)


def check(d):
    ref = reference()
    for name in ["cpp.pth", "cpp.safetensors", "meta.pth"]:
        path = f"{d}/out/{name}"
        got = torch.load(path, weights_only=True) if name.endswith(".pth") else load_file(path)
        assert sorted(got) == sorted(ref), (name, sorted(got))
        for k, v in ref.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), (name, k)
    nested = torch.load(f"{d}/out/nested.pth", weights_only=True)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    assert torch.equal(nested["model.view.t"], base.t()[1:4]), nested["model.view.t"]
    assert torch.equal(nested["model.view.row"], base[2])
    print("python check ok")


{"write": write, "check": check}[sys.argv[1]](sys.argv[2])
