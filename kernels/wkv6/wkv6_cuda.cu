#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda_device.cuh"
#include "wkv6/wkv6_cuda.hpp"

namespace peftkit::kernels::cuda {
namespace {

constexpr int kChunk = static_cast<int>(kWkv6Chunk);
// State columns one block of a pass over chunks owns, and of those, the columns of one thread.
constexpr int kGroupColumns = 16;
constexpr int kThreadColumns = 4;

template <class T>
struct Inputs {
  const T *r, *k, *v, *w;
};

__device__ inline int64_t chunk_count(const Wkv6Shape& s) { return (s.T + kChunk - 1) / kChunk; }

__device__ inline float log_decay(float w) { return -expf(w); }

// The passes over chunks, forward and backward in one form:
//   forward:  X <- X diag(D) + sum_t v_t (k_t * exp(sum of log d after t in the chunk))^T
//             (X = S; per_chunk gets the state entering each chunk, `last` the final state)
//   backward: X <- X diag(D) + sum_t dy_t (r_t * exp(sum of log d before t in the chunk))^T,
//             over the chunks in reverse (X = dL/dS; per_chunk gets the gradient at each chunk's
//             end, `last` dL/ds0)
// D is the chunk's whole decay. A block owns kGroupColumns columns of one (batch, head): columns
// decay independently, so more blocks share the sequential work. Steps past T have d = 1 and zero
// vectors.
template <class RowT, class ColumnT, int N, bool Backward>
__global__ void __launch_bounds__(N* kGroupColumns / kThreadColumns)
    pass_over_chunks_kernel(Wkv6Shape s, const RowT* row_vectors, const ColumnT* column_vectors,
                            const ColumnT* w, const float* initial, float* per_chunk, float* last) {
  constexpr int kThreads = N * kGroupColumns / kThreadColumns;
  constexpr int kThreadsPerRow = kGroupColumns / kThreadColumns;
  __shared__ float rows[kChunk][N];
  __shared__ float columns[kChunk][kGroupColumns];
  __shared__ float log_d[kChunk][kGroupColumns];
  __shared__ float whole_decay[kGroupColumns];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t bh = blockIdx.x;
  const int column0 = static_cast<int>(blockIdx.y) * kGroupColumns;
  const int row = tid / kThreadsPerRow, column = (tid % kThreadsPerRow) * kThreadColumns;
  const HeadIndex head(s, bh);
  const int64_t chunks = chunk_count(s);
  const int64_t state_at = row * N + column0 + column;  // inside one N x N state
  float X[kThreadColumns];
#pragma unroll
  for (int q = 0; q < kThreadColumns; ++q) X[q] = initial[bh * N * N + state_at + q];
  for (int64_t n = 0; n < chunks; ++n) {
    const int64_t c = Backward ? chunks - 1 - n : n, t0 = c * kChunk;
    float* out = per_chunk + (bh * chunks + c) * N * N + state_at;
#pragma unroll
    for (int q = 0; q < kThreadColumns; ++q) out[q] = X[q];
    for (int e = tid; e < kChunk * N; e += kThreads) {
      const int t = e / N, i = e % N;
      rows[t][i] = t0 + t < s.T ? read_only(row_vectors, head.at(t0 + t) + i) : 0.0f;
    }
    for (int e = tid; e < kChunk * kGroupColumns; e += kThreads) {
      const int t = e / kGroupColumns, j = e % kGroupColumns;
      const bool valid = t0 + t < s.T;
      const int64_t o = head.at(t0 + t) + column0 + j;
      log_d[t][j] = valid ? log_decay(read_only(w, o)) : 0.0f;
      columns[t][j] = valid ? read_only(column_vectors, o) : 0.0f;
    }
    __syncthreads();
    for (int e = tid; e < kChunk * kGroupColumns; e += kThreads) {
      const int t = e / kGroupColumns, j = e % kGroupColumns;
      float exponent = 0;
      if (Backward) {
        for (int m = 0; m < t; ++m) exponent += log_d[m][j];
      } else {
        for (int m = t + 1; m < kChunk; ++m) exponent += log_d[m][j];
      }
      columns[t][j] *= expf(exponent);  // only this thread touches columns[t][j] here
      if (t == (Backward ? kChunk - 1 : 0)) whole_decay[j] = expf(exponent + log_d[t][j]);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kThreadColumns; ++q) {
      float acc = X[q] * whole_decay[column + q];
#pragma unroll
      for (int t = 0; t < kChunk; ++t) acc = fmaf(rows[t][row], columns[t][column + q], acc);
      X[q] = acc;
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kThreadColumns; ++q) last[bh * N * N + state_at + q] = X[q];
}

// Shared-memory tiles of the chunk kernels: per-step vectors [kChunk][N + 1] and states
// [N][N + 1] (the padding keeps column walks free of bank conflicts), step-pair matrices
// [kChunk][kChunk].
template <int N>
struct Tiles {
  static constexpr int kStride = N + 1;
  static constexpr int kVector = kChunk * kStride;
  static constexpr int kState = N * kStride;
  static constexpr int kPairs = kChunk * kChunk;
  static constexpr int kThreads = 4 * N;
};

// Loads one vector tile (steps past T as zero) and the tile of log decays from w.
template <int N, class T>
__device__ void load_tile(float* tile, const T* x, const HeadIndex& head, int64_t t0, int64_t T_,
                          int tid) {
  for (int e = tid; e < kChunk * N; e += Tiles<N>::kThreads) {
    const int t = e / N, j = e % N;
    tile[t * Tiles<N>::kStride + j] = t0 + t < T_ ? read_only(x, head.at(t0 + t) + j) : 0.0f;
  }
}
template <int N, class T>
__device__ void load_log_decay(float* tile, const T* w, const HeadIndex& head, int64_t t0,
                               int64_t T_, int tid) {
  for (int e = tid; e < kChunk * N; e += Tiles<N>::kThreads) {
    const int t = e / N, j = e % N;
    tile[t * Tiles<N>::kStride + j] =
        t0 + t < T_ ? log_decay(read_only(w, head.at(t0 + t) + j)) : 0.0f;
  }
}
template <int N>
__device__ void load_state(float* tile, const float* state, int tid) {
  for (int e = tid; e < N * N; e += Tiles<N>::kThreads)
    tile[(e / N) * Tiles<N>::kStride + e % N] = state[e];
}
// The tiles both chunk kernels start from: r, k, v, the log decays and u of one chunk.
template <int N, class T>
__device__ void load_chunk(float* r, float* k, float* v, float* log_d, float* bonus,
                           const Inputs<T>& in, const float* u, const Wkv6Shape& s,
                           const HeadIndex& head, int64_t t0, int64_t bh, int tid) {
  load_tile<N>(r, in.r, head, t0, s.T, tid);
  load_tile<N>(k, in.k, head, t0, s.T, tid);
  load_tile<N>(v, in.v, head, t0, s.T, tid);
  load_log_decay<N>(log_d, in.w, head, t0, s.T, tid);
  for (int j = tid; j < N; j += Tiles<N>::kThreads) bonus[j] = u[(bh % s.H) * N + j];
}
// cumulative[t][j] = sum of log_d[m][j] for m <= t. Kept in double: the kernels exponentiate
// differences of these sums, which reach hundreds under strong decay, and in float such a
// difference would lose the digits of the one or two steps between close positions.
template <int N>
__device__ void cumulate(double* cumulative, const float* log_d, int tid) {
  constexpr int P = Tiles<N>::kStride;
  for (int e = tid; e < kChunk * N; e += Tiles<N>::kThreads) {
    const int t = e / N, j = e % N;
    double sum = 0;
    for (int m = 0; m <= t; ++m) sum += log_d[m * P + j];
    cumulative[t * P + j] = sum;
  }
}
// exp(a - b) of two cumulative log decays.
__device__ inline float decay_between(double a, double b) {
  return expf(static_cast<float>(a - b));
}
// The step-pair matrix: A[t][s] = sum_j r_t k_s exp(c_{t-1} - c_s) for s < t (the state
// contribution of step s to y_t), u's bonus sum_j r_t u k_t on the diagonal, 0 above it.
template <int N>
__device__ void step_pairs(float* A, const float* r, const float* k, const double* cumulative,
                           const float* u, int tid) {
  constexpr int P = Tiles<N>::kStride;
  for (int e = tid; e < kChunk * kChunk; e += Tiles<N>::kThreads) {
    const int t = e / kChunk, s = e % kChunk;
    float sum = 0;
    if (s < t) {
      for (int j = 0; j < N; ++j)
        sum += r[t * P + j] * k[s * P + j] *
               decay_between(cumulative[(t - 1) * P + j], cumulative[s * P + j]);
    } else if (s == t) {
      for (int j = 0; j < N; ++j) sum += r[t * P + j] * u[j] * k[t * P + j];
    }
    A[e] = sum;
  }
}

// Forward (2): y of one chunk of one (batch, head), from the state entering the chunk.
template <class T, int N>
__global__ void __launch_bounds__(4 * N)
    forward_output_kernel(Wkv6Shape s, Inputs<T> in, const float* u, const float* chunk_states,
                          T* y) {
  using Ti = Tiles<N>;
  constexpr int P = Ti::kStride;
  extern __shared__ double shared_doubles[];
  double* cumulative = shared_doubles;
  float *r = reinterpret_cast<float*>(cumulative + Ti::kVector), *k = r + Ti::kVector,
        *v = k + Ti::kVector, *log_d = v + Ti::kVector, *S = log_d + Ti::kVector,
        *A = S + Ti::kState, *bonus = A + Ti::kPairs;
  float* r_decayed = log_d;  // log_d is dead once cumulated; sharing keeps 5 blocks on an SM
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t chunks = chunk_count(s), c = blockIdx.x % chunks, bh = blockIdx.x / chunks,
                t0 = c * kChunk;
  const HeadIndex head(s, bh);
  load_chunk<N>(r, k, v, log_d, bonus, in, u, s, head, t0, bh, tid);
  load_state<N>(S, chunk_states + (bh * chunks + c) * N * N, tid);
  __syncthreads();
  cumulate<N>(cumulative, log_d, tid);
  __syncthreads();
  for (int e = tid; e < kChunk * N; e += Ti::kThreads) {
    const int t = e / N, j = e % N;
    r_decayed[t * P + j] =
        r[t * P + j] * (t > 0 ? decay_between(cumulative[(t - 1) * P + j], 0) : 1.0f);
  }
  step_pairs<N>(A, r, k, cumulative, bonus, tid);
  __syncthreads();
  for (int e = tid; e < kChunk * N; e += Ti::kThreads) {
    const int t = e / N, i = e % N;
    if (t0 + t >= s.T) continue;
    float acc = 0;
#pragma unroll 8
    for (int j = 0; j < N; ++j) acc = fmaf(r_decayed[t * P + j], S[i * P + j], acc);
    for (int m = 0; m <= t; ++m) acc = fmaf(A[t * kChunk + m], v[m * P + i], acc);
    store(y, head.at(t0 + t) + i, acc);
  }
}

// Backward (2): the gradients of one chunk of one (batch, head), from the state entering the
// chunk (Sa) and the gradient of the state at its end (Gb).
//   dr_t = exp(c_{t-1}) (Sa^T dy_t) + sum_{s<t} (dy_t.v_s) k_s exp(c_{t-1} - c_s) + u k_t
//   (dy_t.v_t) dk_t = exp(C - c_t) (Gb^T v_t) + sum_{t'>t} (dy_t'.v_t) r_t' exp(c_{t'-1} - c_t)
//          + u r_t (dy_t.v_t)
//   dv_t = Gb (k_t exp(C - c_t)) + sum_{t'>=t} A[t'][t] dy_t'
//   dL/dlog d_t = d_t sum_i G_t S_{t-1}, expanded into its four products, every one a sum of
//          terms of one sign structure (no difference of large partial sums, which loses the
//          small gradients of strongly decaying columns):
//          exp(C) sum_i Gb Sa + sum_{m<t} k_m dk_m^Gb + sum_{m>t} r_m dr_m^Sa
//          + sum_{m>t} sum_{m'<t} r_m k_m' (dy_m.v_m') exp(c_{m-1} - c_m')
//          (dk^Gb, dr^Sa: the first terms of dk and dr above)
template <class T, int N>
__global__ void __launch_bounds__(4 * N)
    backward_chunk_kernel(Wkv6Shape s, Inputs<T> in, const float* u, const float* chunk_states,
                          const float* chunk_grads, const float* dy, float* dr, float* dk,
                          float* dv, float* dw, float* du_per_chunk) {
  using Ti = Tiles<N>;
  constexpr int P = Ti::kStride;
  extern __shared__ double shared_doubles[];
  double* cumulative = shared_doubles;
  float *r = reinterpret_cast<float*>(cumulative + Ti::kVector), *k = r + Ti::kVector,
        *v = k + Ti::kVector, *g = v + Ti::kVector, *log_d = g + Ti::kVector,
        *dr_from_state = log_d + Ti::kVector, *dk_from_end = dr_from_state + Ti::kVector,
        *Sa = dk_from_end + Ti::kVector, *Gb = Sa + Ti::kState, *A = Gb + Ti::kState,
        *dots = A + Ti::kPairs, *bonus = dots + Ti::kPairs, *entry_to_end = bonus + N;
  float* k_decayed = log_d;  // log_d is dead once cumulated; sharing keeps 3 blocks on an SM
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t chunks = chunk_count(s), c = blockIdx.x % chunks, bh = blockIdx.x / chunks,
                t0 = c * kChunk;
  const HeadIndex head(s, bh);
  load_chunk<N>(r, k, v, log_d, bonus, in, u, s, head, t0, bh, tid);
  load_tile<N>(g, dy, head, t0, s.T, tid);
  load_state<N>(Sa, chunk_states + (bh * chunks + c) * N * N, tid);
  load_state<N>(Gb, chunk_grads + (bh * chunks + c) * N * N, tid);
  __syncthreads();
  cumulate<N>(cumulative, log_d, tid);
  for (int e = tid; e < kChunk * kChunk; e += Ti::kThreads) {
    const int t = e / kChunk, m = e % kChunk;
    float sum = 0;
    for (int i = 0; i < N; ++i) sum = fmaf(g[t * P + i], v[m * P + i], sum);
    dots[e] = sum;  // dy_t . v_m
  }
  __syncthreads();
  const double* whole = cumulative + (kChunk - 1) * P;  // C: the chunk's whole log decay
  for (int e = tid; e < kChunk * N; e += Ti::kThreads) {
    const int t = e / N, j = e % N;
    k_decayed[t * P + j] = k[t * P + j] * decay_between(whole[j], cumulative[t * P + j]);
  }
  step_pairs<N>(A, r, k, cumulative, bonus, tid);
  __syncthreads();
  for (int e = tid; e < kChunk * N; e += Ti::kThreads) {
    const int t = e / N, j = e % N;  // j: a key column for dr, dk; a value row for dv
    const double before = t > 0 ? cumulative[(t - 1) * P + j] : 0.0, at_t = cumulative[t * P + j];
    float from_state = 0, to_end = 0;
#pragma unroll 8
    for (int i = 0; i < N; ++i) {
      from_state = fmaf(g[t * P + i], Sa[i * P + j], from_state);
      to_end = fmaf(Gb[i * P + j], v[t * P + i], to_end);
    }
    float dr_t = from_state * decay_between(before, 0),
          dk_t = to_end * decay_between(whole[j], at_t);
    dr_from_state[t * P + j] = dr_t;
    dk_from_end[t * P + j] = dk_t;
    for (int m = 0; m < t; ++m)
      dr_t += dots[t * kChunk + m] * k[m * P + j] * decay_between(before, cumulative[m * P + j]);
    for (int m = t + 1; m < kChunk; ++m)
      dk_t +=
          dots[m * kChunk + t] * r[m * P + j] * decay_between(cumulative[(m - 1) * P + j], at_t);
    float dv_t = 0;
#pragma unroll 8
    for (int jj = 0; jj < N; ++jj) dv_t = fmaf(Gb[j * P + jj], k_decayed[t * P + jj], dv_t);
    for (int m = t; m < kChunk; ++m) dv_t = fmaf(A[m * kChunk + t], g[m * P + j], dv_t);
    if (t0 + t < s.T) {
      const int64_t o = head.at(t0 + t) + j;
      const float self = dots[t * kChunk + t];
      dr[o] = dr_t + bonus[j] * k[t * P + j] * self;
      dk[o] = dk_t + bonus[j] * r[t * P + j] * self;
      dv[o] = dv_t;
    }
  }
  for (int j = tid; j < N; j += Ti::kThreads) {
    float sum = 0;  // exp(C) sum_i Gb Sa: the first product, the same for every step of column j
    for (int i = 0; i < N; ++i) sum = fmaf(Gb[i * P + j], Sa[i * P + j], sum);
    entry_to_end[j] = sum * decay_between(whole[j], 0);
  }
  __syncthreads();
  // dL/dlog d, one (t, j) per thread: every term is a sum of products of one sign structure.
  // The fourth product's decay exp(c_{m-1} - c_m') splits at t into two factors that are each
  // at most 1, so a thread exponentiates 16 differences instead of one per (m, m') pair.
  for (int e = tid; e < kChunk * N; e += Ti::kThreads) {
    const int t = e / N, j = e % N;
    if (t0 + t >= s.T) continue;
    const double before = t > 0 ? cumulative[(t - 1) * P + j] : 0.0;
    float dlog_d = entry_to_end[j];
    float k_to_t[kChunk];  // k_m' exp(c_{t-1} - c_m') for m' < t, else 0
#pragma unroll
    for (int m = 0; m < kChunk; ++m) {
      k_to_t[m] = 0;
      if (m < t) {
        k_to_t[m] = k[m * P + j] * decay_between(before, cumulative[m * P + j]);
        dlog_d = fmaf(k[m * P + j], dk_from_end[m * P + j], dlog_d);
      }
    }
#pragma unroll
    for (int m = 0; m < kChunk; ++m) {
      if (m <= t) continue;
      float within = 0;
#pragma unroll
      for (int m2 = 0; m2 < kChunk - 1; ++m2)
        within = fmaf(dots[m * kChunk + m2], k_to_t[m2], within);
      const float r_from_t = r[m * P + j] * decay_between(cumulative[(m - 1) * P + j], before);
      dlog_d = fmaf(r[m * P + j], dr_from_state[m * P + j], fmaf(r_from_t, within, dlog_d));
    }
    const double log_d_t = cumulative[t * P + j] - before;
    dw[head.at(t0 + t) + j] = dlog_d * static_cast<float>(log_d_t);
  }
  for (int j = tid; j < N; j += Ti::kThreads) {
    float du = 0;
    for (int t = 0; t < kChunk; ++t)
      du = fmaf(r[t * P + j] * k[t * P + j], dots[t * kChunk + t], du);
    du_per_chunk[(bh * chunks + c) * N + j] = du;
  }
}

template <int N>
constexpr size_t forward_output_bytes() {
  using Ti = Tiles<N>;
  return sizeof(double) * Ti::kVector +
         sizeof(float) * (4 * Ti::kVector + Ti::kState + Ti::kPairs + N);
}
template <int N>
constexpr size_t backward_chunk_bytes() {
  using Ti = Tiles<N>;
  return sizeof(double) * Ti::kVector +
         sizeof(float) * (7 * Ti::kVector + 2 * Ti::kState + 2 * Ti::kPairs + 2 * N);
}

dim3 pass_grid(const Wkv6Shape& s) {
  return dim3(static_cast<unsigned>(s.B * s.H), static_cast<unsigned>(s.N / kGroupColumns));
}
// One block per (batch, head, chunk), on the x dimension alone: y and z stop at 65535 blocks.
dim3 chunk_grid(const Wkv6Shape& s) {
  return dim3(static_cast<unsigned>(wkv6_chunks(s) * s.B * s.H));
}

template <class T, int N>
std::string forward_n(Place place, const Wkv6Shape& s, const Inputs<T>& in, const float* u,
                      const float* s0, T* y, float* s_final, float* chunk_states) {
  constexpr size_t bytes = forward_output_bytes<N>();
  if (!allow_shared(forward_output_kernel<T, N>, bytes))
    return status("wkv6_forward shared memory");
  pass_over_chunks_kernel<T, T, N, false>
      <<<pass_grid(s), N * kGroupColumns / kThreadColumns, 0, stream_of(place)>>>(
          s, in.v, in.k, in.w, s0, chunk_states, s_final);
  forward_output_kernel<T, N>
      <<<chunk_grid(s), Tiles<N>::kThreads, bytes, stream_of(place)>>>(s, in, u, chunk_states, y);
  return status("wkv6_forward");
}

template <class T, int N>
std::string backward_n(Place place, const Wkv6Shape& s, const Inputs<T>& in, const float* u,
                       const float* chunk_states, const float* dy, const float* ds_final, float* dr,
                       float* dk, float* dv, float* dw, float* du_per_chunk, float* ds0,
                       float* chunk_grads) {
  constexpr size_t bytes = backward_chunk_bytes<N>();
  if (!allow_shared(backward_chunk_kernel<T, N>, bytes))
    return status("wkv6_backward shared memory");
  pass_over_chunks_kernel<float, T, N, true>
      <<<pass_grid(s), N * kGroupColumns / kThreadColumns, 0, stream_of(place)>>>(
          s, dy, in.r, in.w, ds_final, chunk_grads, ds0);
  backward_chunk_kernel<T, N><<<chunk_grid(s), Tiles<N>::kThreads, bytes, stream_of(place)>>>(
      s, in, u, chunk_states, chunk_grads, dy, dr, dk, dv, dw, du_per_chunk);
  return status("wkv6_backward");
}

template <class Run>
std::string dispatch(Place place, InputType type, int64_t n, const Run& run) {
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  auto typed = [&](auto tag) -> std::string {
    switch (n) {
      case 32:
        return run(tag, std::integral_constant<int, 32>{});
      case 64:
        return run(tag, std::integral_constant<int, 64>{});
    }
    return "wkv6: unsupported head size " + std::to_string(n);
  };
  return type == InputType::kBFloat16 ? typed(__nv_bfloat16{}) : typed(float{});
}

template <class T>
Inputs<T> inputs(const void* r, const void* k, const void* v, const void* w) {
  return {static_cast<const T*>(r), static_cast<const T*>(k), static_cast<const T*>(v),
          static_cast<const T*>(w)};
}

}  // namespace

bool wkv6_supports(int64_t n) { return n == 32 || n == 64; }

std::string wkv6_forward(Place place, InputType type, const Wkv6Shape& s, const void* r,
                         const void* k, const void* v, const void* w, const float* u,
                         const float* s0, void* y, float* s_final, float* chunk_states) {
  if (s.B * s.H == 0) return {};
  return dispatch(place, type, s.N, [&](auto tag, auto n) {
    using T = decltype(tag);
    return forward_n<T, decltype(n)::value>(place, s, inputs<T>(r, k, v, w), u, s0,
                                            static_cast<T*>(y), s_final, chunk_states);
  });
}

std::string wkv6_backward(Place place, InputType type, const Wkv6Shape& s, const void* r,
                          const void* k, const void* v, const void* w, const float* u,
                          const float* chunk_states, const float* dy, const float* ds_final,
                          float* dr, float* dk, float* dv, float* dw, float* du_per_chunk,
                          float* ds0, float* chunk_grads) {
  if (s.B * s.H == 0) return {};
  return dispatch(place, type, s.N, [&](auto tag, auto n) {
    using T = decltype(tag);
    return backward_n<T, decltype(n)::value>(place, s, inputs<T>(r, k, v, w), u, chunk_states, dy,
                                             ds_final, dr, dk, dv, dw, du_per_chunk, ds0,
                                             chunk_grads);
  });
}

}  // namespace peftkit::kernels::cuda
