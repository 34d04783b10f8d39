"""Times RWKV-PEFT's wkv6state CUDA kernel (the one its `--peft state --op cuda` runs on x060) at the
shapes bench/wkv6_bench times ours, the same way: bf16 inputs, the forward alone, and the forward +
backward with every gradient (the initial state's included) plus the batch sums its autograd wrapper
does; the median of 5 timings of 10 calls each after 3 warm-up calls (CUDA events).

RWKV-PEFT's source is not part of peftkit: pass the folder holding its cuda/wkv6state_op.cpp and
cuda/wkv6state_cuda.cu (from a checkout of github.com/JL-er/RWKV-PEFT). It is compiled with the flags
RWKV-PEFT uses. The kernel fixes T at compile time (-D_T_), so each T gets its own build, all built
in parallel first, then timed one after the other.
    python3 bench/peer_wkv6state.py RWKV_PEFT_CUDA_DIR [B T H]...   (default shapes as wkv6_bench)
"""
import os
import subprocess
import sys

DEFAULT_SHAPES = [(8, 1024, 32), (4, 4096, 32), (1, 16384, 40)]
N = 64


def load(cuda_dir, T):
    from torch.utils.cpp_extension import load as build
    build_dir = os.path.join(os.environ.get("PEER_BUILD", "/tmp/peer-wkv6state"), f"T{T}")
    os.makedirs(build_dir, exist_ok=True)
    build(name=f"wkv6state_T{T}",
          sources=[os.path.join(cuda_dir, "wkv6state_op.cpp"), os.path.join(cuda_dir, "wkv6state_cuda.cu")],
          build_directory=build_dir, is_python_module=False, verbose=False,
          extra_cuda_cflags=["-res-usage", "--use_fast_math", "-O3", "-Xptxas -O3",
                             "--extra-device-vectorization", f"-D_N_={N}", f"-D_T_={T}"])


def time_ms(f, repeats=10, warmup=3):
    import torch
    for _ in range(warmup):
        f()
    times = []
    for _ in range(5):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            f()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / repeats)
    return sorted(times)[2]


def one(cuda_dir, B, T, H):
    import torch
    load(cuda_dir, T)
    op = torch.ops.wkv6state
    C = H * N
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    r, k, v = (torch.empty(B, T, C, device="cuda").uniform_(-1, 1).to(torch.bfloat16) for _ in range(3))
    w = torch.empty(B, T, C, device="cuda").uniform_(-6, 1).to(torch.bfloat16)
    u = torch.empty(H, N, device="cuda").uniform_(-1, 1).to(torch.bfloat16)
    # One state per head, shared by the batch, as its state tuning trains it (the backward reads a
    # per-batch copy, as its wrapper passes it).
    s = torch.randn(H, N, N, device="cuda").to(torch.bfloat16)
    s_batch = s.unsqueeze(0).expand(B, H, N, N).contiguous()
    gy = torch.randn(B, T, C, **bf16)

    def forward():
        y = torch.empty(B, T, C, **bf16)
        op.forward(B, T, C, H, r, k, v, w, u, s_batch, y)
        return y

    def forward_backward():
        forward()
        gr, gk, gv, gw = (torch.empty(B, T, C, **bf16) for _ in range(4))
        gu = torch.empty(B, C, **bf16)
        gs = torch.empty(B, H, N, N, **bf16)
        op.backward(B, T, C, H, r, k, v, w, u, s_batch, gy, gr, gk, gv, gw, gu, gs)
        return gu.sum(0).view(H, N), gs.sum(0)

    print(f"| {B}, {T}, {H} | {time_ms(forward):.3f} | {time_ms(forward_backward):.3f} |", flush=True)


def main():
    if sys.argv[1] == "--build":
        load(sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1] == "--one":
        one(sys.argv[2], *map(int, sys.argv[3:6]))
        return
    cuda_dir = sys.argv[1]
    rest = list(map(int, sys.argv[2:]))
    shapes = [tuple(rest[i:i + 3]) for i in range(0, len(rest) - 2, 3)] or DEFAULT_SHAPES
    builds = [subprocess.Popen([sys.executable, __file__, "--build", cuda_dir, str(T)])
              for T in sorted({T for _, T, _ in shapes})]
    if any(b.wait() for b in builds):
        sys.exit("building RWKV-PEFT's wkv6state kernel failed")
    print("| B, T, H (N = 64) | forward ms | forward + backward ms |\n|---|---|---|", flush=True)
    for B, T, H in shapes:
        subprocess.run([sys.executable, __file__, "--one", cuda_dir, str(B), str(T), str(H)], check=True)


if __name__ == "__main__":
    main()
