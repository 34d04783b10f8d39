"""Writes the .npy fixtures of numpy_dataset_test with NumPy itself (the independent writer).

Token k of every stream is (k * 7919) % 1000, so the C++ test knows each value without reading.
Also prints, one per line, RWKV-LM's magic-prime window offsets for the stream `magic.npy`.
"""
import sys

import numpy as np
from numpy.lib import format as npy_format

out = sys.argv[1]


def tokens(n, dtype):
    return ((np.arange(n, dtype=np.int64) * 7919) % 1000).astype(dtype)


def save(name, array, version):
    with open(f"{out}/{name}", "wb") as f:
        npy_format.write_array(f, array, version=version)


for version in [(1, 0), (2, 0), (3, 0)]:
    for dtype in ["<u2", "<i4", "<i8"]:
        save(f"stream-v{version[0]}-{dtype[1:]}.npy", tokens(1000, dtype), version)
save("rows.npy", tokens(5 * 40, "<u2").reshape(5, 40), (1, 0))
save("big-endian.npy", tokens(100, ">u2"), (1, 0))
save("float.npy", tokens(100, "<f4"), (1, 0))
save("fortran.npy", np.asfortranarray(tokens(100, "<u2").reshape(10, 10)), (1, 0))
save("cube.npy", tokens(8, "<u2").reshape(2, 2, 2), (1, 0))
save("large-ids.npy", np.array([1, 2, 3, 70000, 5, 6], dtype="<i4"), (1, 0))
save("empty-array.npy", np.zeros((0,), dtype="<u2"), (1, 0))
save("magic.npy", tokens(2000, "<u2"), (1, 0))

# RWKV-LM: magic_prime = largest prime p, p % 3 == 2, p < datalen / ctx_len - 1;
# window start = ((int(p * (sqrt(5) - 1) / 2) * ii**3) % p) * ctx_len for ii = 1, 2, ...
ctx_len, n = 16, 2000
def is_prime(x):
    return x >= 2 and all(x % d for d in range(2, int(x ** 0.5) + 1))
p = max(x for x in range(2, n) if x < n / ctx_len - 1 and x % 3 == 2 and is_prime(x))
golden = int(p * (5 ** 0.5 - 1) / 2)
for ii in range(1, p + 1):
    print(((golden * ii ** 3) % p) * ctx_len)
