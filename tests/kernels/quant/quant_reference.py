"""An independent NumPy implementation of the quantized formats, written from spec formats §2 (not
from the C++), checking what peftkit wrote.

  quant_reference.py FILE.safetensors
FILE holds inputs and peftkit's outputs: for each case NAME, NAME.input (fp32 [out, in]) and
  nf4/fp4: NAME.packed (uint8), NAME.absmax (fp32), NAME.blocksize (int64)
  int8:    NAME.q (int8), NAME.scale (fp32)
  dq:      NAME.codes (uint8), NAME.absmax2 (fp32), NAME.offset (fp64)   (double quant of NAME.input, 1-D)
The case's kind is the first part of NAME ("nf4-...", "fp4-...", "int8-...", "dq-..."). Prints "ok" or fails.
"""
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
FP4 = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32) / np.float32(12)


def dynamic_map():
    # bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), with torch's
    # float32 linspace as bitsandbytes uses it.
    data = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2 ** i + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (10 ** (-6 + i) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    return np.sort(np.array(data, dtype=np.float32))


def nearest(values, ascending):
    # The decision trees go up when the value is strictly above the midpoint.
    mid = (ascending[:-1] + ascending[1:]) / np.float32(2)
    return np.searchsorted(mid, values, side="left")


def blockwise(x, blocksize):
    flat = x.reshape(-1).astype(np.float32)
    blocks = -(-flat.size // blocksize)
    padded = np.zeros(blocks * blocksize, np.float32)
    padded[: flat.size] = flat
    grouped = padded.reshape(blocks, blocksize)
    absmax = np.abs(grouped).max(axis=1)
    inverse = np.where(absmax > 0, np.float32(1) / np.where(absmax > 0, absmax, 1), 0).astype(np.float32)
    return (grouped * inverse[:, None]).reshape(-1)[: flat.size], absmax


def codes_4bit(kind, normalized):
    if kind == "nf4":
        return nearest(normalized, NF4)
    order = np.argsort(FP4[:8], kind="stable")
    magnitude = order[nearest(np.abs(normalized), FP4[:8][order])]
    return magnitude + 8 * (normalized < 0)


def pack(codes):
    if codes.size % 2:
        codes = np.append(codes, 0)
    pairs = codes.reshape(-1, 2)
    return (pairs[:, 0] * 16 + pairs[:, 1]).astype(np.uint8)


def main():
    t = load_file(sys.argv[1])
    cases = sorted({k.rsplit(".", 1)[0] for k in t})
    for name in cases:
        kind = name.split("-")[0]
        x = t[name + ".input"]
        if kind in ("nf4", "fp4"):
            blocksize = int(t[name + ".blocksize"])
            normalized, absmax = blockwise(x, blocksize)
            assert np.array_equal(absmax, t[name + ".absmax"]), name + ": absmax"
            packed = pack(codes_4bit(kind, normalized))
            diff = np.nonzero(packed != t[name + ".packed"])[0]
            assert diff.size == 0, f"{name}: packed bytes differ at {diff[:5]}: {packed[diff[:5]]} vs {t[name + '.packed'][diff[:5]]}"
        elif kind == "int8":
            scale = np.abs(x).max(axis=1).astype(np.float32)
            factor = np.where(scale > 0, np.float32(127) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
            q = np.clip(np.round(x * factor[:, None]), -127, 127).astype(np.int8)  # round half to even
            assert np.array_equal(scale, t[name + ".scale"]), name + ": scale"
            assert np.array_equal(q, t[name + ".q"]), f"{name}: {np.count_nonzero(q != t[name + '.q'])} codes differ"
        elif kind == "dq":
            offset = np.float32(x.mean(dtype=np.float64))
            assert abs(float(t[name + ".offset"]) - float(x.astype(np.float64).mean())) < 1e-6 * abs(float(offset)), name
            centred = x - np.float32(t[name + ".offset"])
            normalized, absmax = blockwise(centred, 256)
            assert np.array_equal(absmax, t[name + ".absmax2"]), name + ": absmax2"
            assert np.array_equal(nearest(normalized, dynamic_map()).astype(np.uint8), t[name + ".codes"]), name + ": codes"
        else:
            raise SystemExit("unknown case " + name)
    print("ok", len(cases), "cases")


main()
