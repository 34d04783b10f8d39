"""Writes binidx fixtures with NumPy and struct, independently of the C++ code (spec formats §3.1).

Document d (d = 0..5) holds tokens 100*d + k for k < 3 + 4*d, then the end-of-document token 0.
  make_binidx.py write DIR      writes DIR/u16.{bin,idx} (code 8), DIR/i32.{bin,idx} (code 4),
                                DIR/float.idx (code 6), DIR/legacy.idx (TNTIDX), DIR/short.idx
  make_binidx.py check PREFIX   prints the documents of a binidx pair, one per line
"""
import struct
import sys

import numpy as np

DOCS = [[100 * d + k for k in range(3 + 4 * d)] + [0] for d in range(6)]


def write(prefix, dtype, code, docs=DOCS):
    tokens = np.concatenate([np.array(d, dtype=dtype) for d in docs])
    tokens.tofile(prefix + ".bin")
    sizes = np.array([len(d) for d in docs], dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("<i8") * np.dtype(dtype).itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
        f.write(struct.pack("<Q", len(docs)) + struct.pack("<Q", len(docs) + 1))
        f.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(docs) + 1, dtype="<i8").tobytes())


def check(prefix):
    with open(prefix + ".idx", "rb") as f:
        data = f.read()
    assert data[:9] == b"MMIDIDX\x00\x00" and struct.unpack("<Q", data[9:17])[0] == 1
    code = data[17]
    n, docs = struct.unpack("<QQ", data[18:34])
    dtype = {8: "<u2", 4: "<i4"}[code]
    sizes = np.frombuffer(data, "<i4", n, 34)
    pointers = np.frombuffer(data, "<i8", n, 34 + 4 * n)
    doc_idx = np.frombuffer(data, "<i8", docs, 34 + 12 * n)
    assert list(doc_idx) == list(range(n + 1)), doc_idx
    tokens = np.fromfile(prefix + ".bin", dtype)
    print(dtype)
    for s, p in zip(sizes, pointers):
        start = p // np.dtype(dtype).itemsize
        print(" ".join(str(t) for t in tokens[start:start + s]))


if sys.argv[1] == "write":
    d = sys.argv[2]
    write(f"{d}/u16", "<u2", 8)
    write(f"{d}/i32", "<i4", 4)
    write(f"{d}/float", "<f8", 6)
    write(f"{d}/big", "<i4", 4, [[1, 2, 70000, 0]])
    with open(f"{d}/legacy.idx", "wb") as f:
        f.write(b"TNTIDX\x00\x00" + bytes(40))
    with open(f"{d}/legacy.bin", "wb") as f:
        f.write(bytes(8))
    with open(f"{d}/u16.idx", "rb") as f:
        truncated = f.read()[:50]
    with open(f"{d}/short.idx", "wb") as f:
        f.write(truncated)
    with open(f"{d}/short.bin", "wb") as f:
        f.write(bytes(8))
else:
    check(sys.argv[2])
