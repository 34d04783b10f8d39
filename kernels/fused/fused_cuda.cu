#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "cuda_device.cuh"
#include "fused/fused_cuda.hpp"

namespace peftkit::kernels::cuda {
namespace {

constexpr int kRows = static_cast<int>(kFusedRowsPerPartial);

template <class T>
__device__ inline float load_or_zero(const T* p, int64_t i) {
  return p ? load(p, i) : 0.0f;
}

__device__ inline float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <class Run>
std::string typed(Place place, FusedType type, const Run& run) {
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  if (type == FusedType::kBFloat16)
    run(__nv_bfloat16{});
  else
    run(float{});
  return status("fused kernel");
}

// The forward kernels sum no parameter gradients, so they take one row per block (per channel)
// or per warp (per head): every block's loads are then in flight at once, where a loop over a
// partial's kRows rows, as the backward kernels run, waits for each row's loads in turn.

// K elements of T loaded or stored at once (16 bytes by default): kernels take their
// activations in packs where C and every pointer allow, element by element otherwise.
template <class T>
constexpr int kPackSize = 16 / sizeof(T);
template <class T, int K = kPackSize<T>>
struct alignas(sizeof(T) * K) Pack {
  T v[K];
};

// Whether every pointer allows 16-byte loads and stores.
inline bool packable(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// ---- token shift + mixes: forward thread = a pack of channels (or one) of one row of (b, t);
// backward thread = a channel of kRows rows ----

// One pointer per mix, passed by value. Indexed by constants only (loops unrolled over the
// slots), the pointers stay in the parameter bank and per-mix values in registers; a loop to a
// run-time M indexes them through a stack copy, twice as slow. The forward takes kMaxMixes slots
// and skips those past M; the backward, which keeps a gradient sum per mix, is instantiated per M.
template <class P, int Slots = kMaxMixes>
struct MixPlanes {
  P* plane[Slots];
};

// K channels per thread: 1, or a 16-byte pack when C and the pointers allow.
template <class T, int K>
__global__ void token_shift_mix_forward_kernel(int64_t T_, int64_t C, int64_t M, const T* x,
                                               const T* shift, const float* mix, MixPlanes<T> out) {
  using P = Pack<T, K>;
  const int64_t c = (blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x) * K;
  if (c >= C) return;
  const int64_t row = blockIdx.x, t = row % T_;
  const P own = *reinterpret_cast<const P*>(x + row * C + c);
  const P previous =
      *reinterpret_cast<const P*>(t > 0 ? x + (row - 1) * C + c : shift + (row / T_) * C + c);
  float xv[K], delta[K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
    xv[j] = load(own.v, j);
    delta[j] = load(previous.v, j) - xv[j];
  }
#pragma unroll
  for (int m = 0; m < kMaxMixes; ++m)
    if (m < M) {
      P mixed;
#pragma unroll
      for (int j = 0; j < K; ++j) store(mixed.v, j, fmaf(delta[j], mix[m * C + c + j], xv[j]));
      *reinterpret_cast<P*>(out.plane[m] + row * C + c) = mixed;
    }
}

template <class T, int M>
__global__ void token_shift_mix_backward_kernel(int64_t B, int64_t T_, int64_t C, const T* x,
                                                const T* shift, const float* mix,
                                                MixPlanes<const T, M> dout, T* dx, float* dshift,
                                                float* dmix_partials) {
  const int64_t c = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t rows = B * T_;
  float mv[M], dmix[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    mv[m] = mix[m * C + c];
    dmix[m] = 0;
  }
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kRows);
       row < min(rows, (blockIdx.x + 1) * static_cast<int64_t>(kRows)); ++row) {
    const int64_t t = row % T_;
    const float xv = load(x, row * C + c);
    const float delta = (t > 0 ? load(x, (row - 1) * C + c) : load(shift, (row / T_) * C + c)) - xv;
    float own = 0, to_previous = 0, from_next = 0;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const T* d = dout.plane[m];
      if (!d) continue;  // a mix nobody used: zero gradient
      const float g = load(d, row * C + c);
      own = fmaf(g, 1.0f - mv[m], own);
      to_previous = fmaf(g, mv[m], to_previous);
      dmix[m] = fmaf(g, delta, dmix[m]);
      if (t + 1 < T_) from_next = fmaf(load(d, (row + 1) * C + c), mv[m], from_next);
    }
    store(dx, row * C + c, own + from_next);
    if (t == 0) dshift[(row / T_) * C + c] = to_previous;
  }
  if (dmix_partials) {
#pragma unroll
    for (int m = 0; m < M; ++m) dmix_partials[(blockIdx.x * M + m) * C + c] = dmix[m];
  }
}

// ---- per-head row ops: one warp per (row, head), lane owns N / 32 channels; a block's warps
// take consecutive row ranges of one head, each range one partial of the parameter gradients ----

constexpr int kWarps = 4;

struct HeadRows {
  int64_t head, row_begin, row_end, partial;
  __device__ HeadRows(int64_t rows) {
    head = blockIdx.y;
    partial = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
    row_begin = partial * kRows;
    row_end = min(rows, row_begin + kRows);
  }
};

// The forward's (row, head) of this warp; row >= rows past the end.
struct HeadRow {
  int64_t head, row;
  __device__ HeadRow() : head(blockIdx.y), row(blockIdx.x * int64_t{kWarps} + threadIdx.x / 32) {}
};

template <class T, int E>
__global__ void kk_ab_forward_kernel(int64_t rows, int64_t H, const T* k, const T* a,
                                     const float* k_k, const float* k_a, T* k_out, T* a_out,
                                     T* b_out) {
  constexpr int N = E * 32;
  const HeadRow hr;
  const int lane = threadIdx.x % 32;
  if (hr.row >= rows) return;  // the whole warp
  const int64_t row = hr.row;
  float kv[E], av[E], u[E], square = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
    kv[e] = load(k, i);
    av[e] = load(a, i);
    u[e] = kv[e] * k_k[c];
    square = fmaf(u[e], u[e], square);
  }
  const float inv = 1.0f / fmaxf(sqrtf(warp_sum(square)), 1e-12f);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
    const float kk = u[e] * inv;
    store(k_out, i, kv[e] * fmaf(av[e] - 1.0f, k_a[c], 1.0f));
    store(a_out, i, -kk);
    store(b_out, i, kk * av[e]);
  }
}

template <class T, int E>
__global__ void kk_ab_backward_kernel(int64_t rows, int64_t H, const T* k, const T* a,
                                      const float* k_k, const float* k_a, const T* dk_out,
                                      const T* da_out, const T* db_out, T* dk, T* da,
                                      float* dk_k_partials, float* dk_a_partials) {
  constexpr int N = E * 32;
  const HeadRows hr(rows);
  const int lane = threadIdx.x % 32;
  float dk_k[E] = {}, dk_a[E] = {};
  for (int64_t row = hr.row_begin; row < hr.row_end; ++row) {
    float kv[E], av[E], u[E], dkk[E], square = 0, dot = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
      kv[e] = load(k, i);
      av[e] = load(a, i);
      u[e] = kv[e] * k_k[c];
      square = fmaf(u[e], u[e], square);
    }
    const float norm = sqrtf(warp_sum(square));
    const bool clamped = norm < 1e-12f;
    const float inv = 1.0f / fmaxf(norm, 1e-12f);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t i = row * H * N + hr.head * N + lane + 32 * e;
      const float kk = u[e] * inv;
      // a_out = -kk, b_out = kk * a
      dkk[e] = fmaf(load_or_zero(db_out, i), av[e], -load_or_zero(da_out, i));
      dot = fmaf(dkk[e], kk, dot);
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
      const float kk = u[e] * inv, g = load_or_zero(dk_out, i);
      // kk = u / max(|u|, eps): du = (dkk - kk (kk . dkk)) / |u| unless clamped.
      const float du = clamped ? dkk[e] * inv : (dkk[e] - kk * dot) * inv;
      store(dk, i, fmaf(g, fmaf(av[e] - 1.0f, k_a[c], 1.0f), du * k_k[c]));
      store(da, i, fmaf(g, kv[e] * k_a[c], load_or_zero(db_out, i) * kk));
      dk_k[e] = fmaf(du, kv[e], dk_k[e]);
      dk_a[e] = fmaf(g, kv[e] * (av[e] - 1.0f), dk_a[e]);
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t c = hr.head * N + lane + 32 * e;
    if (dk_k_partials) dk_k_partials[hr.partial * H * N + c] = dk_k[e];
    if (dk_a_partials) dk_a_partials[hr.partial * H * N + c] = dk_a[e];
  }
}

template <class T, int E>
__global__ void norm_bonus_gate_forward_kernel(int64_t rows, int64_t H, float eps, const T* y,
                                               const T* r, const T* k, const T* v, const T* g,
                                               const float* w, const float* bias, const float* r_k,
                                               T* out) {
  constexpr int N = E * 32;
  const HeadRow hr;
  const int lane = threadIdx.x % 32;
  if (hr.row >= rows) return;  // the whole warp
  const int64_t row = hr.row;
  float yv[E], vv[E], gv[E], sum = 0, bonus = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
    yv[e] = load(y, i);
    vv[e] = load(v, i);  // loaded with the others, before the sums wait for them
    gv[e] = load(g, i);
    sum += yv[e];
    bonus = fmaf(load(r, i) * load(k, i), r_k[c], bonus);
  }
  const float mean = warp_sum(sum) / N;
  float var = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) var = fmaf(yv[e] - mean, yv[e] - mean, var);
  const float rstd = rsqrtf(warp_sum(var) / N + eps);
  bonus = warp_sum(bonus);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
    const float pre = fmaf((yv[e] - mean) * rstd, w[c], fmaf(bonus, vv[e], bias[c]));
    store(out, i, pre * gv[e]);
  }
}

template <class T, int E>
__global__ void norm_bonus_gate_backward_kernel(int64_t rows, int64_t H, float eps, const T* y,
                                                const T* r, const T* k, const T* v, const T* g,
                                                const float* w, const float* bias, const float* r_k,
                                                const T* dout, T* dy, T* dr, T* dk, T* dv, T* dg,
                                                float* dw_partials, float* dbias_partials,
                                                float* dr_k_partials) {
  constexpr int N = E * 32;
  const HeadRows hr(rows);
  const int lane = threadIdx.x % 32;
  float dw[E] = {}, dbias[E] = {}, dr_k[E] = {};
  for (int64_t row = hr.row_begin; row < hr.row_end; ++row) {
    float yv[E], rv[E], kv[E], vv[E], dpre[E], sum = 0, bonus = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
      yv[e] = load(y, i);
      rv[e] = load(r, i);
      kv[e] = load(k, i);
      vv[e] = load(v, i);
      dpre[e] = load(dout, i) * load(g, i);
      sum += yv[e];
      bonus = fmaf(rv[e] * kv[e], r_k[c], bonus);
    }
    const float mean = warp_sum(sum) / N;
    float var = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) var = fmaf(yv[e] - mean, yv[e] - mean, var);
    const float rstd = rsqrtf(warp_sum(var) / N + eps);
    bonus = warp_sum(bonus);
    float mean_dxhat = 0, mean_dxhat_xhat = 0, dbonus = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t c = hr.head * N + lane + 32 * e;
      const float xhat = (yv[e] - mean) * rstd, dxhat = dpre[e] * w[c];
      mean_dxhat += dxhat;
      mean_dxhat_xhat = fmaf(dxhat, xhat, mean_dxhat_xhat);
      dbonus = fmaf(dpre[e], vv[e], dbonus);
    }
    mean_dxhat = warp_sum(mean_dxhat) / N;
    mean_dxhat_xhat = warp_sum(mean_dxhat_xhat) / N;
    dbonus = warp_sum(dbonus);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t c = hr.head * N + lane + 32 * e, i = row * H * N + c;
      const float xhat = (yv[e] - mean) * rstd, dxhat = dpre[e] * w[c];
      const float pre = fmaf(xhat, w[c], fmaf(bonus, vv[e], bias[c]));
      store(dg, i, load(dout, i) * pre);
      store(dy, i, rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
      store(dv, i, dpre[e] * bonus);
      store(dr, i, dbonus * kv[e] * r_k[c]);
      store(dk, i, dbonus * rv[e] * r_k[c]);
      dw[e] = fmaf(dpre[e], xhat, dw[e]);
      dbias[e] += dpre[e];
      dr_k[e] = fmaf(dbonus, rv[e] * kv[e], dr_k[e]);
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t c = hr.head * N + lane + 32 * e, o = hr.partial * H * N + c;
    if (dw_partials) dw_partials[o] = dw[e];
    if (dbias_partials) dbias_partials[o] = dbias[e];
    if (dr_k_partials) dr_k_partials[o] = dr_k[e];
  }
}

// ---- ReLU²: elementwise, grid-stride ----

// f(pack index) over the packs, then g(element index) over the rest, grid-stride.
template <class T, class PackOp, class ElementOp>
__device__ inline void for_packs_then_elements(int64_t n, bool packed, const PackOp& pack_op,
                                               const ElementOp& element_op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t packs = packed ? n / kPackSize<T> : 0;
  for (int64_t p = first; p < packs; p += stride) pack_op(p);
  for (int64_t i = packs * kPackSize<T> + first; i < n; i += stride) element_op(i);
}

template <class T>
__global__ void relu_square_forward_kernel(int64_t n, bool packed, const T* x, T* out) {
  for_packs_then_elements<T>(
      n, packed,
      [&](int64_t p) {
        const Pack<T> in = reinterpret_cast<const Pack<T>*>(x)[p];
        Pack<T> result;
#pragma unroll
        for (int j = 0; j < kPackSize<T>; ++j) {
          const float h = fmaxf(load(in.v, j), 0.0f);
          store(result.v, j, h * h);
        }
        reinterpret_cast<Pack<T>*>(out)[p] = result;
      },
      [&](int64_t i) {
        const float h = fmaxf(load(x, i), 0.0f);
        store(out, i, h * h);
      });
}

template <class T>
__global__ void relu_square_backward_kernel(int64_t n, bool packed, const T* x, const T* dout,
                                            T* dx) {
  for_packs_then_elements<T>(
      n, packed,
      [&](int64_t p) {
        const Pack<T> in = reinterpret_cast<const Pack<T>*>(x)[p];
        const Pack<T> grad = reinterpret_cast<const Pack<T>*>(dout)[p];
        Pack<T> result;
#pragma unroll
        for (int j = 0; j < kPackSize<T>; ++j)
          store(result.v, j, 2.0f * fmaxf(load(in.v, j), 0.0f) * load(grad.v, j));
        reinterpret_cast<Pack<T>*>(dx)[p] = result;
      },
      [&](int64_t i) { store(dx, i, 2.0f * fmaxf(load(x, i), 0.0f) * load(dout, i)); });
}

// Blocks of 256 threads for n elements, a pack (or an element) each, at most 65536 blocks.
template <class T>
unsigned elementwise_blocks(int64_t n, bool packed) {
  const int64_t items = packed ? (n + kPackSize<T> - 1) / kPackSize<T> : n;
  return static_cast<unsigned>(std::min<int64_t>((items + 255) / 256, 65536));
}

// Rows on the grid's x dimension (up to 2^31 - 1 blocks), channels or heads on y (at most 65535).
dim3 channel_grid(int64_t rows, int64_t C) {
  return dim3(static_cast<unsigned>(fused_partials(rows)), static_cast<unsigned>((C + 255) / 256));
}
dim3 head_grid(int64_t rows, int64_t H) {
  return dim3(static_cast<unsigned>((fused_partials(rows) + kWarps - 1) / kWarps),
              static_cast<unsigned>(H));
}
// The per-head forward kernels: a (row, head) per warp.
dim3 head_row_grid(int64_t rows, int64_t H) {
  return dim3(static_cast<unsigned>((rows + kWarps - 1) / kWarps), static_cast<unsigned>(H));
}
// The per-head kernels: launch(element tag, lanes-per-head constant) for a supported head size.
template <class Launch>
std::string per_head(Place place, FusedType type, int64_t rows, int64_t N, const Launch& launch) {
  if (N != 32 && N != 64 && N != 128 && N != 256)
    return "fused: unsupported head size " + std::to_string(N);
  if (rows == 0) return {};
  return typed(place, type, [&](auto tag) {
    switch (N) {
      case 32:
        launch(tag, std::integral_constant<int, 1>{});
        break;
      case 64:
        launch(tag, std::integral_constant<int, 2>{});
        break;
      case 128:
        launch(tag, std::integral_constant<int, 4>{});
        break;
      default:
        launch(tag, std::integral_constant<int, 8>{});
        break;
    }
  });
}

}  // namespace

int64_t fused_head_partials(int64_t rows) {
  return (fused_partials(rows) + kWarps - 1) / kWarps * kWarps;
}

// The M planes of a token_shift_mix call as the kernels take them.
template <class P, int Slots, class Pointer>
MixPlanes<P, Slots> mix_planes(int64_t M, Pointer const* planes) {
  MixPlanes<P, Slots> result{};
  for (int64_t m = 0; m < M; ++m) result.plane[m] = static_cast<P*>(planes[m]);
  return result;
}

// run(std::integral_constant<int, count>) for a count in [First, kMaxMixes].
template <int First = 1, class Run>
void with_mix_count(int64_t count, const Run& run) {
  if constexpr (First < kMaxMixes)
    if (count != First) return with_mix_count<First + 1>(count, run);
  run(std::integral_constant<int, First>{});
}

std::string token_shift_mix_forward(Place place, FusedType type, int64_t B, int64_t T, int64_t C,
                                    int64_t M, const void* x, const void* shift, const float* mix,
                                    void* const* out) {
  if (M < 1 || M > kMaxMixes) return "token_shift_mix: 1 to 8 mixes";
  if (B * T * C == 0) return {};
  if (B * T > std::numeric_limits<int32_t>::max()) return "token_shift_mix: over 2^31 - 1 rows";
  bool aligned = packable({x, shift});  // the fp32 mixes are read one by one
  for (int64_t m = 0; m < M; ++m) aligned = aligned && packable({out[m]});
  return typed(place, type, [&](auto tag) {
    using E = decltype(tag);
    auto launch = [&](auto per_thread) {
      constexpr int kK = decltype(per_thread)::value;
      // Whole warps, up to 256 threads, over the C / K threads of a row.
      const int64_t threads = std::min<int64_t>(256, (C / kK + 31) / 32 * 32);
      const dim3 grid(static_cast<unsigned>(B * T),
                      static_cast<unsigned>((C / kK + threads - 1) / threads));
      token_shift_mix_forward_kernel<E, kK>
          <<<grid, static_cast<unsigned>(threads), 0, stream_of(place)>>>(
              T, C, M, static_cast<const E*>(x), static_cast<const E*>(shift), mix,
              mix_planes<E, kMaxMixes>(M, out));
    };
    if (aligned && C % kPackSize<E> == 0)
      launch(std::integral_constant<int, kPackSize<E>>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
}

std::string token_shift_mix_backward(Place place, FusedType type, int64_t B, int64_t T, int64_t C,
                                     int64_t M, const void* x, const void* shift, const float* mix,
                                     const void* const* dout, void* dx, float* dshift,
                                     float* dmix_partials) {
  if (M < 1 || M > kMaxMixes) return "token_shift_mix: 1 to 8 mixes";
  if (B * T * C == 0) return {};
  return typed(place, type, [&](auto tag) {
    using E = decltype(tag);
    with_mix_count(M, [&](auto count) {
      constexpr int kM = decltype(count)::value;
      token_shift_mix_backward_kernel<E, kM><<<channel_grid(B * T, C), 256, 0, stream_of(place)>>>(
          B, T, C, static_cast<const E*>(x), static_cast<const E*>(shift), mix,
          mix_planes<const E, kM>(M, dout), static_cast<E*>(dx), dshift, dmix_partials);
    });
  });
}

std::string kk_ab_forward(Place place, FusedType type, int64_t rows, int64_t H, int64_t N,
                          const void* k, const void* a, const float* k_k, const float* k_a,
                          void* k_out, void* a_out, void* b_out) {
  return per_head(place, type, rows, N, [&](auto tag, auto lanes) {
    using E = decltype(tag);
    kk_ab_forward_kernel<E, decltype(lanes)::value>
        <<<head_row_grid(rows, H), 32 * kWarps, 0, stream_of(place)>>>(
            rows, H, static_cast<const E*>(k), static_cast<const E*>(a), k_k, k_a,
            static_cast<E*>(k_out), static_cast<E*>(a_out), static_cast<E*>(b_out));
  });
}

std::string kk_ab_backward(Place place, FusedType type, int64_t rows, int64_t H, int64_t N,
                           const void* k, const void* a, const float* k_k, const float* k_a,
                           const void* dk_out, const void* da_out, const void* db_out, void* dk,
                           void* da, float* dk_k_partials, float* dk_a_partials) {
  return per_head(place, type, rows, N, [&](auto tag, auto lanes) {
    using E = decltype(tag);
    kk_ab_backward_kernel<E, decltype(lanes)::value>
        <<<head_grid(rows, H), 32 * kWarps, 0, stream_of(place)>>>(
            rows, H, static_cast<const E*>(k), static_cast<const E*>(a), k_k, k_a,
            static_cast<const E*>(dk_out), static_cast<const E*>(da_out),
            static_cast<const E*>(db_out), static_cast<E*>(dk), static_cast<E*>(da), dk_k_partials,
            dk_a_partials);
  });
}

std::string norm_bonus_gate_forward(Place place, FusedType type, int64_t rows, int64_t H, int64_t N,
                                    double eps, const void* y, const void* r, const void* k,
                                    const void* v, const void* g, const float* w, const float* bias,
                                    const float* r_k, void* out) {
  return per_head(place, type, rows, N, [&](auto tag, auto lanes) {
    using E = decltype(tag);
    norm_bonus_gate_forward_kernel<E, decltype(lanes)::value>
        <<<head_row_grid(rows, H), 32 * kWarps, 0, stream_of(place)>>>(
            rows, H, static_cast<float>(eps), static_cast<const E*>(y), static_cast<const E*>(r),
            static_cast<const E*>(k), static_cast<const E*>(v), static_cast<const E*>(g), w, bias,
            r_k, static_cast<E*>(out));
  });
}

std::string norm_bonus_gate_backward(Place place, FusedType type, int64_t rows, int64_t H,
                                     int64_t N, double eps, const void* y, const void* r,
                                     const void* k, const void* v, const void* g, const float* w,
                                     const float* bias, const float* r_k, const void* dout,
                                     void* dy, void* dr, void* dk, void* dv, void* dg,
                                     float* dw_partials, float* dbias_partials,
                                     float* dr_k_partials) {
  return per_head(place, type, rows, N, [&](auto tag, auto lanes) {
    using E = decltype(tag);
    norm_bonus_gate_backward_kernel<E, decltype(lanes)::value>
        <<<head_grid(rows, H), 32 * kWarps, 0, stream_of(place)>>>(
            rows, H, static_cast<float>(eps), static_cast<const E*>(y), static_cast<const E*>(r),
            static_cast<const E*>(k), static_cast<const E*>(v), static_cast<const E*>(g), w, bias,
            r_k, static_cast<const E*>(dout), static_cast<E*>(dy), static_cast<E*>(dr),
            static_cast<E*>(dk), static_cast<E*>(dv), static_cast<E*>(dg), dw_partials,
            dbias_partials, dr_k_partials);
  });
}

std::string relu_square_forward(Place place, FusedType type, int64_t n, const void* x, void* out) {
  if (n == 0) return {};
  const bool packed = packable({x, out});
  return typed(place, type, [&](auto tag) {
    using E = decltype(tag);
    relu_square_forward_kernel<E><<<elementwise_blocks<E>(n, packed), 256, 0, stream_of(place)>>>(
        n, packed, static_cast<const E*>(x), static_cast<E*>(out));
  });
}

std::string relu_square_backward(Place place, FusedType type, int64_t n, const void* x,
                                 const void* dout, void* dx) {
  if (n == 0) return {};
  const bool packed = packable({x, dout, dx});
  return typed(place, type, [&](auto tag) {
    using E = decltype(tag);
    relu_square_backward_kernel<E><<<elementwise_blocks<E>(n, packed), 256, 0, stream_of(place)>>>(
        n, packed, static_cast<const E*>(x), static_cast<const E*>(dout), static_cast<E*>(dx));
  });
}

}  // namespace peftkit::kernels::cuda
