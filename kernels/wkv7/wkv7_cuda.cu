#include "wkv7/wkv7_cuda.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

namespace peftkit::kernels::cuda {
namespace {

constexpr float kDecayScale = 0.60653065971263342f;  // e^-0.5
constexpr int kChunk = static_cast<int>(kWkv7Chunk);
// State columns per thread in the passes over time; state rows per thread in the chunk pass.
constexpr int kSlice = 16;

__device__ inline float load(const float* p, int64_t i) { return p[i]; }
__device__ inline float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ inline void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ inline float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ inline float decay_of_sigmoid(float sig) { return expf(-kDecayScale * sig); }

template <class T>
struct Inputs {
  const T *r, *z, *k, *v, *a, *b;
};

// Where step t of head bh starts in a [B, T, H, N] tensor.
struct HeadIndex {
  int64_t base, stride;
  __device__ HeadIndex(const Wkv7Shape& s, int64_t bh)
      : base((bh / s.H) * s.T * s.H * s.N + (bh % s.H) * s.N), stride(s.H * s.N) {}
  __device__ int64_t at(int64_t t) const { return base + t * stride; }
};

// A tile holds `Vectors` per-step vectors for the kChunk steps of one chunk, as floats in shared
// memory: tile[(vector * kChunk + step) * N + n]; steps past T read as zero. A Read functor gives
// the raw value of a vector's element (`load`) and what the tile keeps of it (`finish`, e.g. the
// decay of a raw z). The passes over time fetch the next chunk's tile into registers while they
// work on the current one; the loops are unrolled so every vector index is a constant.
template <int N, int Threads, int Vectors>
struct TileStage {
  static_assert(kChunk * N % Threads == 0, "a tile vector must split evenly over the block");
  static constexpr int kPerVector = kChunk * N / Threads;
  float values[Vectors][kPerVector];

  template <class Read>
  __device__ void fetch(const Read& read, const HeadIndex& head, int64_t t0, int64_t T, int tid) {
#pragma unroll
    for (int vector = 0; vector < Vectors; ++vector)
#pragma unroll
      for (int m = 0; m < kPerVector; ++m) {
        const int e = tid + m * Threads, step = e / N;
        values[vector][m] = t0 + step < T ? read.load(vector, head.at(t0 + step) + e % N) : 0.0f;
      }
  }
  template <class Read>
  __device__ void store_to(const Read& read, float* tile, int tid) const {
#pragma unroll
    for (int vector = 0; vector < Vectors; ++vector)
#pragma unroll
      for (int m = 0; m < kPerVector; ++m) tile[vector * kChunk * N + tid + m * Threads] = read.finish(vector, values[vector][m]);
  }
};

// The passes over time split each state row over P = N / kSlice threads (consecutive lanes);
// thread p of a row owns its columns in 4-wide groups interleaved with the row's other threads,
// so the 16-byte shared loads of a warp hit distinct banks. The rows of a state evolve
// independently (sa_t and y_t of row i need only row i), so a (batch, head) may spread its rows
// over `Blocks` blocks: few heads then still fill the GPU. With one block, from N = 64 a thread
// owns two rows: every row reads the step's vectors whole from shared memory, whose bandwidth
// bounds these passes, and two rows per read halve that traffic.
template <int N, int Blocks>
struct RowSplit {
  static constexpr int P = N / kSlice;
  static constexpr int kBlockRows = N / Blocks;
  static constexpr int kRows = Blocks == 1 && N >= 64 ? 2 : 1;
  static constexpr int kRowGroups = kBlockRows / kRows;
  static constexpr int kThreads = kRowGroups * P;
  static_assert(P == 1 || kThreads % 32 == 0, "the row sums shuffle over whole warps");
  // Row r of row group i in block part g.
  __device__ static int row(int g, int i, int r) { return g * kBlockRows + i + r * kRowGroups; }
  __device__ static int column(int p, int c) { return 4 * ((c / 4) * P + p) + c % 4; }
  // The thread's kSlice entries of a length-N vector in shared memory.
  __device__ static void read(const float* vector, int p, float (&out)[kSlice]) {
#pragma unroll
    for (int g = 0; g < kSlice / 4; ++g) {
      const float4 x = reinterpret_cast<const float4*>(vector)[g * P + p];
      out[4 * g] = x.x;
      out[4 * g + 1] = x.y;
      out[4 * g + 2] = x.z;
      out[4 * g + 3] = x.w;
    }
  }
  // Sum over the row's threads.
  __device__ static float row_sum(float x) {
#pragma unroll
    for (int o = 1; o < P; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
  }
};

template <int n>
__device__ inline float dot(const float (&x)[n], const float (&y)[n]) {
  float s0 = 0, s1 = 0;  // two chains halve the dependent-add latency
#pragma unroll
  for (int c = 0; c < n; c += 2) {
    s0 = fmaf(x[c], y[c], s0);
    s1 = fmaf(x[c + 1], y[c + 1], s1);
  }
  return s0 + s1;
}

// ---- forward: one pass over time per (batch, head) ----

enum ForwardVector { kFwR, kFwD, kFwK, kFwV, kFwA, kFwB, kForwardVectors };

template <class T>
struct ForwardRead {
  Inputs<T> in;
  __device__ float load(int vector, int64_t i) const {
    switch (vector) {
      case kFwR: return peftkit::kernels::cuda::load(in.r, i);
      case kFwD: return peftkit::kernels::cuda::load(in.z, i);
      case kFwK: return peftkit::kernels::cuda::load(in.k, i);
      case kFwV: return peftkit::kernels::cuda::load(in.v, i);
      case kFwA: return peftkit::kernels::cuda::load(in.a, i);
      default: return peftkit::kernels::cuda::load(in.b, i);
    }
  }
  __device__ float finish(int vector, float x) const { return vector == kFwD ? decay_of_sigmoid(sigmoid(x)) : x; }
};

template <int N>
constexpr size_t forward_shared_bytes() {
  return sizeof(float) * (kForwardVectors + 2) * kChunk * N;  // tile, y and sa of the chunk
}

template <class T, int N, int Blocks>
__global__ void __launch_bounds__(RowSplit<N, Blocks>::kThreads)
    forward_kernel(Wkv7Shape s, Inputs<T> in, const float* s0, T* y, float* s_final, float* chunk_states,
                   float* sa_out) {
  using Split = RowSplit<N, Blocks>;
  extern __shared__ float4 shared4[];
  float* tile = reinterpret_cast<float*>(shared4);
  float* y_tile = tile + kForwardVectors * kChunk * N;
  float* sa_tile = y_tile + kChunk * N;
  const int tid = threadIdx.x, i = tid / Split::P, p = tid % Split::P, g = blockIdx.x % Blocks;
  const int64_t bh = blockIdx.x / Blocks, chunks = (s.T + kChunk - 1) / kChunk;
  const HeadIndex head(s, bh);
  const ForwardRead<T> read{in};

  constexpr int R = Split::kRows;
  float S[R][kSlice];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c) S[r][c] = s0[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)];
  TileStage<N, Split::kThreads, kForwardVectors> stage;
  stage.fetch(read, head, 0, s.T, tid);
  stage.store_to(read, tile, tid);
  __syncthreads();
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t t0 = chunk * kChunk;
    const int steps = static_cast<int>(s.T - t0 < kChunk ? s.T - t0 : kChunk);
    if (chunk + 1 < chunks) stage.fetch(read, head, t0 + kChunk, s.T, tid);
    if (chunk_states) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float* out = chunk_states + ((bh * chunks + chunk) * N + Split::row(g, i, r)) * N;
#pragma unroll
        for (int c = 0; c < kSlice; ++c) out[Split::column(p, c)] = S[r][c];
      }
    }
    for (int step = 0; step < steps; ++step) {
      auto vector = [&](int which) { return tile + (which * kChunk + step) * N; };
      float x[kSlice], sa[R], vi[R], yi[R];
      Split::read(vector(kFwA), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        sa[r] = Split::row_sum(dot(S[r], x));
        vi[r] = vector(kFwV)[Split::row(g, i, r)];
      }
      Split::read(vector(kFwD), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < kSlice; ++c) S[r][c] *= x[c];
      Split::read(vector(kFwB), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < kSlice; ++c) S[r][c] = fmaf(sa[r], x[c], S[r][c]);
      Split::read(vector(kFwK), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < kSlice; ++c) S[r][c] = fmaf(vi[r], x[c], S[r][c]);
      Split::read(vector(kFwR), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r) yi[r] = Split::row_sum(dot(S[r], x));
      if (p == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          y_tile[step * N + Split::row(g, i, r)] = yi[r];
          sa_tile[step * N + Split::row(g, i, r)] = sa[r];
        }
      }
    }
    __syncthreads();
    for (int e = tid; e < steps * Split::kBlockRows; e += Split::kThreads) {
      const int n = g * Split::kBlockRows + e % Split::kBlockRows, at = e / Split::kBlockRows * N + n;
      const int64_t o = head.at(t0 + e / Split::kBlockRows) + n;
      store(y, o, y_tile[at]);
      if (sa_out) sa_out[o] = sa_tile[at];
    }
    if (chunk + 1 < chunks) stage.store_to(read, tile, tid);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c) s_final[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)] = S[r][c];
}

// ---- backward (1): the state gradient, one reverse pass per (batch, head) ----

enum StateGradVector { kSgR, kSgD, kSgK, kSgA, kSgB, kSgDy, kStateGradVectors };

template <class T>
struct StateGradRead {
  Inputs<T> in;
  const float* dy;
  __device__ float load(int vector, int64_t i) const {
    switch (vector) {
      case kSgR: return peftkit::kernels::cuda::load(in.r, i);
      case kSgD: return peftkit::kernels::cuda::load(in.z, i);
      case kSgK: return peftkit::kernels::cuda::load(in.k, i);
      case kSgA: return peftkit::kernels::cuda::load(in.a, i);
      case kSgB: return peftkit::kernels::cuda::load(in.b, i);
      default: return dy ? dy[i] : 0.0f;
    }
  }
  __device__ float finish(int vector, float x) const { return vector == kSgD ? decay_of_sigmoid(sigmoid(x)) : x; }
};

template <int N>
constexpr size_t state_grad_shared_bytes() {
  return sizeof(float) * (kStateGradVectors + 2) * kChunk * N;  // tile, dsa and dv of the chunk
}

// With g = dS_t + dy_t r_t^T (the gradient reaching S_t): dsa_t = g b_t, dv_t = g k_t and
// dS_{t-1} = g diag(d_t) + dsa_t a_t^T. chunk_grads[c] is dS at the end of chunk c, before the
// chunk's own outputs add to it.
template <class T, int N, int Blocks>
__global__ void __launch_bounds__(RowSplit<N, Blocks>::kThreads)
    state_grad_kernel(Wkv7Shape s, Inputs<T> in, const float* dy, const float* ds_final, float* ds0,
                      float* chunk_grads, float* dsa_out, float* dv_out) {
  using Split = RowSplit<N, Blocks>;
  extern __shared__ float4 shared4[];
  float* tile = reinterpret_cast<float*>(shared4);
  float* dsa_tile = tile + kStateGradVectors * kChunk * N;
  float* dv_tile = dsa_tile + kChunk * N;
  const int tid = threadIdx.x, i = tid / Split::P, p = tid % Split::P, g = blockIdx.x % Blocks;
  const int64_t bh = blockIdx.x / Blocks, chunks = (s.T + kChunk - 1) / kChunk;
  const HeadIndex head(s, bh);
  const StateGradRead<T> read{in, dy};

  constexpr int R = Split::kRows;
  float dS[R][kSlice];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c)
      dS[r][c] = ds_final ? ds_final[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)] : 0.0f;
  TileStage<N, Split::kThreads, kStateGradVectors> stage;
  stage.fetch(read, head, (chunks - 1) * kChunk, s.T, tid);
  stage.store_to(read, tile, tid);
  __syncthreads();
  for (int64_t chunk = chunks - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * kChunk;
    const int steps = static_cast<int>(s.T - t0 < kChunk ? s.T - t0 : kChunk);
    if (chunk > 0) stage.fetch(read, head, t0 - kChunk, s.T, tid);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float* out = chunk_grads + ((bh * chunks + chunk) * N + Split::row(g, i, r)) * N;
#pragma unroll
      for (int c = 0; c < kSlice; ++c) out[Split::column(p, c)] = dS[r][c];
    }
    for (int step = steps - 1; step >= 0; --step) {
      auto vector = [&](int which) { return tile + (which * kChunk + step) * N; };
      float x[kSlice], dsa[R], dv[R];
      Split::read(vector(kSgR), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float dyi = vector(kSgDy)[Split::row(g, i, r)];
#pragma unroll
        for (int c = 0; c < kSlice; ++c) dS[r][c] = fmaf(dyi, x[c], dS[r][c]);
      }
      Split::read(vector(kSgB), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r) dsa[r] = Split::row_sum(dot(dS[r], x));
      Split::read(vector(kSgK), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r) dv[r] = Split::row_sum(dot(dS[r], x));
      Split::read(vector(kSgD), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < kSlice; ++c) dS[r][c] *= x[c];
      Split::read(vector(kSgA), p, x);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < kSlice; ++c) dS[r][c] = fmaf(dsa[r], x[c], dS[r][c]);
      if (p == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          dsa_tile[step * N + Split::row(g, i, r)] = dsa[r];
          dv_tile[step * N + Split::row(g, i, r)] = dv[r];
        }
      }
    }
    __syncthreads();
    for (int e = tid; e < steps * Split::kBlockRows; e += Split::kThreads) {
      const int n = g * Split::kBlockRows + e % Split::kBlockRows, at = e / Split::kBlockRows * N + n;
      const int64_t o = head.at(t0 + e / Split::kBlockRows) + n;
      dsa_out[o] = dsa_tile[at];
      dv_out[o] = dv_tile[at];
    }
    if (chunk > 0) stage.store_to(read, tile, tid);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c) ds0[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)] = dS[r][c];
}

// ---- backward (2): every chunk in parallel, column sums over the rows ----

// Thread (j, q) owns column j of rows q*kSlice .. q*kSlice+15; the Q threads of a column are
// consecutive lanes. Anchors (the chunk's states every kEvery steps) live in shared memory, each
// row group shifted by one warp's width of columns so a warp's accesses hit distinct banks.
template <int N>
struct ColumnSplit {
  static constexpr int Q = N / kSlice;
  static constexpr int kThreads = N * Q;
  static constexpr int kEvery = N <= 64 ? 4 : 8;
  static constexpr int kAnchors = kChunk / kEvery;
  static constexpr int kGroupStride = kSlice * N + (Q > 1 ? 32 / Q : 0);
  static constexpr int kAnchorFloats = Q * kGroupStride;
  __device__ static float sum(float x) {
#pragma unroll
    for (int o = 1; o < Q; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
  }
};

enum ChunkVector { kCkR, kCkD, kCkSig, kCkK, kCkA, kCkB, kCkV, kCkDy, kCkSa, kCkDsa, kChunkVectors };

template <class T>
struct ChunkRead {
  Inputs<T> in;
  const float *dy, *sa, *dsa;
  __device__ float load(int vector, int64_t i) const {
    switch (vector) {
      case kCkR: return peftkit::kernels::cuda::load(in.r, i);
      case kCkD: case kCkSig: return peftkit::kernels::cuda::load(in.z, i);
      case kCkK: return peftkit::kernels::cuda::load(in.k, i);
      case kCkA: return peftkit::kernels::cuda::load(in.a, i);
      case kCkB: return peftkit::kernels::cuda::load(in.b, i);
      case kCkV: return peftkit::kernels::cuda::load(in.v, i);
      case kCkDy: return dy ? dy[i] : 0.0f;
      case kCkSa: return sa[i];
      default: return dsa[i];
    }
  }
  __device__ float finish(int vector, float x) const {
    return vector == kCkD ? decay_of_sigmoid(sigmoid(x)) : vector == kCkSig ? sigmoid(x) : x;
  }
};

template <int N>
constexpr size_t chunk_shared_bytes() {
  return sizeof(float) * (kChunkVectors * kChunk * N + ColumnSplit<N>::kAnchors * ColumnSplit<N>::kAnchorFloats);
}

// The thread's kSlice consecutive entries (its rows) of a length-N vector in shared memory.
__device__ inline void read_rows(const float* vector, int q, float (&out)[kSlice]) {
#pragma unroll
  for (int g = 0; g < kSlice / 4; ++g) {
    const float4 x = reinterpret_cast<const float4*>(vector + q * kSlice)[g];
    out[4 * g] = x.x;
    out[4 * g + 1] = x.y;
    out[4 * g + 2] = x.z;
    out[4 * g + 3] = x.w;
  }
}

template <class T, int N>
__global__ void __launch_bounds__(ColumnSplit<N>::kThreads)
    chunk_grad_kernel(Wkv7Shape s, Inputs<T> in, const float* dy, const float* sa, const float* dsa,
                      const float* chunk_states, const float* chunk_grads, float* dr, float* dz, float* dk, float* da,
                      float* db) {
  using Split = ColumnSplit<N>;
  extern __shared__ float4 shared4[];
  float* tile = reinterpret_cast<float*>(shared4);
  const int tid = threadIdx.x, j = tid / Split::Q, q = tid % Split::Q;
  const int64_t chunks = (s.T + kChunk - 1) / kChunk, bh = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t t0 = chunk * kChunk;
  const int steps = static_cast<int>(s.T - t0 < kChunk ? s.T - t0 : kChunk);
  const HeadIndex head(s, bh);
  const ChunkRead<T> read{in, dy, sa, dsa};
  {
    TileStage<N, Split::kThreads, kChunkVectors> stage;
    stage.fetch(read, head, t0, s.T, tid);
    stage.store_to(read, tile, tid);
  }
  auto vector = [&](int which, int step) { return tile + (which * kChunk + step) * N; };
  float* anchors = tile + kChunkVectors * kChunk * N + q * Split::kGroupStride + j;  // + anchor, row offsets

  float cur[kSlice], dS[kSlice];
  const int64_t state_offset = (bh * chunks + chunk) * N * N + static_cast<int64_t>(q) * kSlice * N + j;
#pragma unroll
  for (int u = 0; u < kSlice; ++u) {
    cur[u] = chunk_states[state_offset + u * N];
    dS[u] = chunk_grads[state_offset + u * N];
  }
  __syncthreads();
  // S_t = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T, restricted to the thread's column and rows.
  auto advance = [&](float(&S)[kSlice], int step) {
    const float dj = vector(kCkD, step)[j], bj = vector(kCkB, step)[j], kj = vector(kCkK, step)[j];
    float sa_rows[kSlice], v_rows[kSlice];
    read_rows(vector(kCkSa, step), q, sa_rows);
    read_rows(vector(kCkV, step), q, v_rows);
#pragma unroll
    for (int u = 0; u < kSlice; ++u) S[u] = fmaf(v_rows[u], kj, fmaf(sa_rows[u], bj, S[u] * dj));
  };
  for (int step = 0; step < steps; ++step) {
    if (step % Split::kEvery == 0) {
      float* anchor = anchors + (step / Split::kEvery) * Split::kAnchorFloats;
#pragma unroll
      for (int u = 0; u < kSlice; ++u) anchor[u * N] = cur[u];
    }
    advance(cur, step);
  }
  // cur = S after the chunk's last step; walk back.
  for (int step = steps - 1; step >= 0; --step) {
    float prev[kSlice];
    const int from = step / Split::kEvery * Split::kEvery;
    const float* anchor = anchors + (step / Split::kEvery) * Split::kAnchorFloats;
#pragma unroll
    for (int u = 0; u < kSlice; ++u) prev[u] = anchor[u * N];
    for (int t = from; t < step; ++t) advance(prev, t);

    const float rj = vector(kCkR, step)[j], dj = vector(kCkD, step)[j], aj = vector(kCkA, step)[j];
    float dy_rows[kSlice], v_rows[kSlice], sa_rows[kSlice], dsa_rows[kSlice];
    read_rows(vector(kCkDy, step), q, dy_rows);
    read_rows(vector(kCkV, step), q, v_rows);
    read_rows(vector(kCkSa, step), q, sa_rows);
    read_rows(vector(kCkDsa, step), q, dsa_rows);
    float sums[5] = {0, 0, 0, 0, 0};  // dr, dk, db, dd, da
#pragma unroll
    for (int u = 0; u < kSlice; ++u) {
      const float g = fmaf(dy_rows[u], rj, dS[u]);
      sums[0] = fmaf(dy_rows[u], cur[u], sums[0]);
      sums[1] = fmaf(g, v_rows[u], sums[1]);
      sums[2] = fmaf(g, sa_rows[u], sums[2]);
      sums[3] = fmaf(g, prev[u], sums[3]);
      sums[4] = fmaf(dsa_rows[u], prev[u], sums[4]);
      dS[u] = fmaf(dsa_rows[u], aj, g * dj);
      cur[u] = prev[u];
    }
#pragma unroll
    for (int w = 0; w < 5; ++w) sums[w] = Split::sum(sums[w]);
    const int64_t o = head.at(t0 + step) + j;
    const float sig = vector(kCkSig, step)[j];
    // d = exp(-c sigmoid(z)): dd/dz = -c d sigmoid(z) (1 - sigmoid(z)).
    const float dz_j = sums[3] * (-kDecayScale * dj * sig * (1.0f - sig));
    for (int w = q; w < 5; w += Split::Q) {
      switch (w) {
        case 0: dr[o] = sums[0]; break;
        case 1: dk[o] = sums[1]; break;
        case 2: db[o] = sums[2]; break;
        case 3: dz[o] = dz_j; break;
        default: da[o] = sums[4]; break;
      }
    }
  }
}

std::string status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

template <class Kernel>
bool allow_shared(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) ==
         cudaSuccess;
}

template <class T>
Inputs<T> inputs(const void* r, const void* z, const void* k, const void* v, const void* a, const void* b) {
  return {static_cast<const T*>(r), static_cast<const T*>(z), static_cast<const T*>(k),
          static_cast<const T*>(v), static_cast<const T*>(a), static_cast<const T*>(b)};
}

// Blocks per (batch, head) of the passes over time: two when even twice the heads fit on the SMs
// one block each (from N = 64; smaller heads have too few rows to split). Measured on an H200:
// B*H = 12 and 32 gain, 96 and 128 (which would then share SMs) lose.
template <int N>
int row_blocks(Place place, const Wkv7Shape& s) {
  if (N < 64) return 1;
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, place.device) != cudaSuccess) return 1;
  return 2 * s.B * s.H <= sms ? 2 : 1;
}

// Calls run(integral_constant<int, Blocks>) for the row split chosen for this shape.
template <int N, class Run>
std::string with_row_blocks(Place place, const Wkv7Shape& s, const Run& run) {
  if constexpr (N >= 64) {
    if (row_blocks<N>(place, s) == 2) return run(std::integral_constant<int, 2>{});
  }
  return run(std::integral_constant<int, 1>{});
}

template <class T, int N>
std::string forward_n(Place place, const Wkv7Shape& s, const Inputs<T>& in, const float* s0, void* y, float* s_final,
                      float* chunk_states, float* sa) {
  constexpr size_t bytes = forward_shared_bytes<N>();
  return with_row_blocks<N>(place, s, [&](auto blocks) {
    constexpr int Blocks = decltype(blocks)::value;
    if (!allow_shared(forward_kernel<T, N, Blocks>, bytes)) return status("wkv7_forward shared memory");
    forward_kernel<T, N, Blocks><<<static_cast<unsigned>(s.B * s.H * Blocks), RowSplit<N, Blocks>::kThreads, bytes,
                                   stream_of(place)>>>(s, in, s0, static_cast<T*>(y), s_final, chunk_states, sa);
    return status("wkv7_forward");
  });
}

template <class T, int N>
std::string backward_n(Place place, const Wkv7Shape& s, const Inputs<T>& in, const float* chunk_states, const float* sa,
                       const float* dy, const float* ds_final, float* dr, float* dz, float* dk, float* dv, float* da,
                       float* db, float* ds0, float* scratch) {
  float* chunk_grads = scratch;
  float* dsa = scratch + wkv7_chunk_state_floats(s);
  constexpr size_t state_bytes = state_grad_shared_bytes<N>(), chunk_bytes = chunk_shared_bytes<N>();
  if (!allow_shared(chunk_grad_kernel<T, N>, chunk_bytes)) return status("wkv7_backward shared memory");
  const std::string state_pass = with_row_blocks<N>(place, s, [&](auto blocks) {
    constexpr int Blocks = decltype(blocks)::value;
    if (!allow_shared(state_grad_kernel<T, N, Blocks>, state_bytes)) return status("wkv7_backward shared memory");
    state_grad_kernel<T, N, Blocks><<<static_cast<unsigned>(s.B * s.H * Blocks), RowSplit<N, Blocks>::kThreads,
                                      state_bytes, stream_of(place)>>>(s, in, dy, ds_final, ds0, chunk_grads, dsa, dv);
    return status("wkv7_backward state gradient");
  });
  if (!state_pass.empty()) return state_pass;
  chunk_grad_kernel<T, N><<<static_cast<unsigned>(s.B * s.H * wkv7_chunks(s)), ColumnSplit<N>::kThreads, chunk_bytes, stream_of(place)>>>(
      s, in, dy, sa, dsa, chunk_states, chunk_grads, dr, dz, dk, da, db);
  return status("wkv7_backward chunk gradients");
}

template <class Run>
std::string dispatch_n(int64_t n, const Run& run) {
  switch (n) {
    case 16: return run(std::integral_constant<int, 16>{});
    case 32: return run(std::integral_constant<int, 32>{});
    case 64: return run(std::integral_constant<int, 64>{});
    case 128: return run(std::integral_constant<int, 128>{});
  }
  return "wkv7: unsupported head size " + std::to_string(n);
}

}  // namespace

bool wkv7_supports(int64_t n) { return n == 16 || n == 32 || n == 64 || n == 128; }

std::string wkv7_forward(Place place, InputType type, const Wkv7Shape& s, const void* r, const void* z, const void* k,
                         const void* v, const void* a, const void* b, const float* s0, void* y, float* s_final,
                         float* chunk_states, float* sa) {
  if (s.B * s.H == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  auto typed = [&](auto tag) {
    using T = decltype(tag);
    const Inputs<T> in = inputs<T>(r, z, k, v, a, b);
    return dispatch_n(s.N, [&](auto n) { return forward_n<T, decltype(n)::value>(place, s, in, s0, y, s_final, chunk_states, sa); });
  };
  return type == InputType::kBFloat16 ? typed(__nv_bfloat16{}) : typed(float{});
}

std::string wkv7_backward(Place place, InputType type, const Wkv7Shape& s, const void* r, const void* z, const void* k,
                          const void* v, const void* a, const void* b, const float* chunk_states, const float* sa,
                          const float* dy, const float* ds_final, float* dr, float* dz, float* dk, float* dv,
                          float* da, float* db, float* ds0, float* scratch) {
  if (s.B * s.H == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  auto typed = [&](auto tag) {
    using T = decltype(tag);
    const Inputs<T> in = inputs<T>(r, z, k, v, a, b);
    return dispatch_n(s.N, [&](auto n) {
      return backward_n<T, decltype(n)::value>(place, s, in, chunk_states, sa, dy, ds_final, dr, dz, dk, dv, da, db, ds0,
                                               scratch);
    });
  };
  return type == InputType::kBFloat16 ? typed(__nv_bfloat16{}) : typed(float{});
}

}  // namespace peftkit::kernels::cuda
