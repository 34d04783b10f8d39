#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <atomic>
#include <type_traits>

#include "cuda_device.cuh"
#include "wkv7/wkv7_cuda.hpp"

namespace peftkit::kernels::cuda {
namespace {

constexpr float kDecayScale = 0.60653065971263342f;  // e^-0.5
constexpr int kChunk = static_cast<int>(kWkv7Chunk);
// State columns per thread in the passes over time; state rows per thread in the chunk pass.
constexpr int kSlice = 16;

__device__ inline float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ inline float decay_of_sigmoid(float sig) { return expf(-kDecayScale * sig); }

template <class T>
struct Inputs {
  const T *r, *z, *k, *v, *a, *b;
};

__device__ inline int64_t chunk_count(const Wkv7Shape& s) { return (s.T + kChunk - 1) / kChunk; }
// Steps of the chunk starting at t0 (the last one may be short).
__device__ inline int chunk_steps(const Wkv7Shape& s, int64_t t0) {
  return static_cast<int>(s.T - t0 < kChunk ? s.T - t0 : kChunk);
}

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
      for (int m = 0; m < kPerVector; ++m)
        tile[vector * kChunk * N + tid + m * Threads] = read.finish(vector, values[vector][m]);
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
      case kFwR:
        return peftkit::kernels::cuda::load(in.r, i);
      case kFwD:
        return peftkit::kernels::cuda::load(in.z, i);
      case kFwK:
        return peftkit::kernels::cuda::load(in.k, i);
      case kFwV:
        return peftkit::kernels::cuda::load(in.v, i);
      case kFwA:
        return peftkit::kernels::cuda::load(in.a, i);
      default:
        return peftkit::kernels::cuda::load(in.b, i);
    }
  }
  __device__ float finish(int vector, float x) const {
    return vector == kFwD ? decay_of_sigmoid(sigmoid(x)) : x;
  }
};

template <int N>
constexpr size_t forward_shared_bytes() {
  return sizeof(float) * (kForwardVectors + 2) * kChunk * N;  // tile, y and sa of the chunk
}

// fp32 inputs only (bf16 takes the chunked path below).
template <int N, int Blocks>
__global__ void __launch_bounds__(RowSplit<N, Blocks>::kThreads)
    forward_kernel(Wkv7Shape s, Inputs<float> in, const float* s0, float* y, float* s_final,
                   float* chunk_states, float* sa_out) {
  using Split = RowSplit<N, Blocks>;
  extern __shared__ float4 shared4[];
  float* tile = reinterpret_cast<float*>(shared4);
  float* y_tile = tile + kForwardVectors * kChunk * N;
  float* sa_tile = y_tile + kChunk * N;
  const int tid = threadIdx.x, i = tid / Split::P, p = tid % Split::P, g = blockIdx.x % Blocks;
  const int64_t bh = blockIdx.x / Blocks, chunks = chunk_count(s);
  const HeadIndex head(s, bh);
  const ForwardRead<float> read{in};

  constexpr int R = Split::kRows;
  float S[R][kSlice];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c)
      S[r][c] = s0[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)];
  TileStage<N, Split::kThreads, kForwardVectors> stage;
  stage.fetch(read, head, 0, s.T, tid);
  stage.store_to(read, tile, tid);
  __syncthreads();
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t t0 = chunk * kChunk;
    const int steps = chunk_steps(s, t0);
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
      const int n = g * Split::kBlockRows + e % Split::kBlockRows,
                at = e / Split::kBlockRows * N + n;
      const int64_t o = head.at(t0 + e / Split::kBlockRows) + n;
      y[o] = y_tile[at];
      if (sa_out) sa_out[o] = sa_tile[at];
    }
    if (chunk + 1 < chunks) stage.store_to(read, tile, tid);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c)
      s_final[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)] = S[r][c];
}

// ---- backward (1): the state gradient, one reverse pass per (batch, head) ----

enum StateGradVector { kSgR, kSgD, kSgK, kSgA, kSgB, kSgDy, kStateGradVectors };

struct StateGradRead {
  Inputs<float> in;
  const float* dy;
  __device__ float load(int vector, int64_t i) const {
    switch (vector) {
      case kSgR:
        return peftkit::kernels::cuda::load(in.r, i);
      case kSgD:
        return peftkit::kernels::cuda::load(in.z, i);
      case kSgK:
        return peftkit::kernels::cuda::load(in.k, i);
      case kSgA:
        return peftkit::kernels::cuda::load(in.a, i);
      case kSgB:
        return peftkit::kernels::cuda::load(in.b, i);
      default:
        return dy ? dy[i] : 0.0f;
    }
  }
  __device__ float finish(int vector, float x) const {
    return vector == kSgD ? decay_of_sigmoid(sigmoid(x)) : x;
  }
};

template <int N>
constexpr size_t state_grad_shared_bytes() {
  return sizeof(float) * (kStateGradVectors + 2) * kChunk * N;  // tile, dsa and dv of the chunk
}

// With g = dS_t + dy_t r_t^T (the gradient reaching S_t): dsa_t = g b_t, dv_t = g k_t and
// dS_{t-1} = g diag(d_t) + dsa_t a_t^T. chunk_grads[c] is dS at the end of chunk c, before the
// chunk's own outputs add to it. fp32 inputs only (bf16 takes the chunked pass below).
template <int N, int Blocks>
__global__ void __launch_bounds__(RowSplit<N, Blocks>::kThreads)
    state_grad_kernel(Wkv7Shape s, Inputs<float> in, const float* dy, const float* ds_final,
                      float* ds0, float* chunk_grads, float* dsa_out, float* dv_out) {
  using Split = RowSplit<N, Blocks>;
  extern __shared__ float4 shared4[];
  float* tile = reinterpret_cast<float*>(shared4);
  float* dsa_tile = tile + kStateGradVectors * kChunk * N;
  float* dv_tile = dsa_tile + kChunk * N;
  const int tid = threadIdx.x, i = tid / Split::P, p = tid % Split::P, g = blockIdx.x % Blocks;
  const int64_t bh = blockIdx.x / Blocks, chunks = chunk_count(s);
  const HeadIndex head(s, bh);
  const StateGradRead read{in, dy};

  constexpr int R = Split::kRows;
  float dS[R][kSlice];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kSlice; ++c)
      dS[r][c] =
          ds_final ? ds_final[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)] : 0.0f;
  TileStage<N, Split::kThreads, kStateGradVectors> stage;
  stage.fetch(read, head, (chunks - 1) * kChunk, s.T, tid);
  stage.store_to(read, tile, tid);
  __syncthreads();
  for (int64_t chunk = chunks - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * kChunk;
    const int steps = chunk_steps(s, t0);
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
      const int n = g * Split::kBlockRows + e % Split::kBlockRows,
                at = e / Split::kBlockRows * N + n;
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
    for (int c = 0; c < kSlice; ++c)
      ds0[(bh * N + Split::row(g, i, r)) * N + Split::column(p, c)] = dS[r][c];
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

enum ChunkVector {
  kCkR,
  kCkD,
  kCkSig,
  kCkK,
  kCkA,
  kCkB,
  kCkV,
  kCkDy,
  kCkSa,
  kCkDsa,
  kChunkVectors
};

struct ChunkRead {
  Inputs<float> in;
  const float *dy, *sa, *dsa;
  __device__ float load(int vector, int64_t i) const {
    switch (vector) {
      case kCkR:
        return peftkit::kernels::cuda::load(in.r, i);
      case kCkD:
      case kCkSig:
        return peftkit::kernels::cuda::load(in.z, i);
      case kCkK:
        return peftkit::kernels::cuda::load(in.k, i);
      case kCkA:
        return peftkit::kernels::cuda::load(in.a, i);
      case kCkB:
        return peftkit::kernels::cuda::load(in.b, i);
      case kCkV:
        return peftkit::kernels::cuda::load(in.v, i);
      case kCkDy:
        return dy ? dy[i] : 0.0f;
      case kCkSa:
        return sa[i];
      default:
        return dsa[i];
    }
  }
  __device__ float finish(int vector, float x) const {
    return vector == kCkD ? decay_of_sigmoid(sigmoid(x)) : vector == kCkSig ? sigmoid(x) : x;
  }
};

template <int N>
constexpr size_t chunk_shared_bytes() {
  return sizeof(float) *
         (kChunkVectors * kChunk * N + ColumnSplit<N>::kAnchors * ColumnSplit<N>::kAnchorFloats);
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

// fp32 inputs only (bf16 takes the tensor-core kernel below).
template <int N>
__global__ void __launch_bounds__(ColumnSplit<N>::kThreads)
    chunk_grad_kernel(Wkv7Shape s, Inputs<float> in, const float* dy, const float* sa,
                      const float* dsa, const float* chunk_states, const float* chunk_grads,
                      float* dr, float* dz, float* dk, float* da, float* db) {
  using Split = ColumnSplit<N>;
  extern __shared__ float4 shared4[];
  float* tile = reinterpret_cast<float*>(shared4);
  const int tid = threadIdx.x, j = tid / Split::Q, q = tid % Split::Q;
  const int64_t chunks = chunk_count(s), bh = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t t0 = chunk * kChunk;
  const int steps = chunk_steps(s, t0);
  const HeadIndex head(s, bh);
  const ChunkRead read{in, dy, sa, dsa};
  {
    TileStage<N, Split::kThreads, kChunkVectors> stage;
    stage.fetch(read, head, t0, s.T, tid);
    stage.store_to(read, tile, tid);
  }
  auto vector = [&](int which, int step) { return tile + (which * kChunk + step) * N; };
  float* anchors =
      tile + kChunkVectors * kChunk * N + q * Split::kGroupStride + j;  // + anchor, row offsets

  float cur[kSlice], dS[kSlice];
  const int64_t state_offset =
      (bh * chunks + chunk) * N * N + static_cast<int64_t>(q) * kSlice * N + j;
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
        case 0:
          dr[o] = sums[0];
          break;
        case 1:
          dk[o] = sums[1];
          break;
        case 2:
          db[o] = sums[2];
          break;
        case 3:
          dz[o] = dz_j;
          break;
        default:
          da[o] = sums[4];
          break;
      }
    }
  }
}

// ---- bf16 inputs: chunks as matrix products on tensor cores ----
//
// Inside a chunk, with Λ_t = Σ_{s≤t} log d_s per key (Λ⁻_t = Λ_{t-1}), the step's decays become
// column scalings by e^{±Λ}, and a chunk's 16 steps become products of [16, N] tiles (rows are
// steps), N×N states and [16, 16] step-pair matrices. |Λ| ≤ 16 · 0.61 keeps e^{±Λ} well inside
// fp32. The dots run as TF32 with fp32 accumulation: bf16 inputs are exact in TF32, fp32
// intermediates (states, sa, dsa) keep three mantissa bits more than bf16, and carried states are
// accumulated, never rounded. Tails: steps past T read as zero with decay 1 and are never written.
namespace wmma = nvcuda::wmma;
using TF32A = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using TF32AT = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using TF32B = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using TF32BT = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using Acc16 = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// How a chunk product rounds its operands. kTf32: each fp32 operand once to TF32 (a 10-bit
// mantissa), one tensor-core product. kSplitTf32: each operand as the sum of two TF32 parts,
// x = hi + lo, and three products (lo·hi + hi·lo + hi·hi; lo·lo is below fp32's rounding):
// close to fp32 accuracy at three times the tensor-core work. The chunked passes split what the
// carried state depends on (its error compounds over chunks; final state and dh0 stay within
// 2e-4 of float64) and round once what only reaches an output (y, dv: bf16-level bounds).
enum class Dots { kTf32, kSplitTf32 };

__device__ inline float tf32_round(float x) {
  // Masked: the conversion leaves the low 13 bits unspecified, and lo = x - hi needs them zero.
  return __uint_as_float(__float_as_uint(wmma::__float_to_tf32(x)) & 0xffffe000u);
}

// A fragment holding fp32 values becomes their TF32 rounding.
template <class Fragment>
__device__ inline void round_tf32(Fragment& f) {
#pragma unroll
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = tf32_round(f.x[e]);
}

template <class Fragment>
__device__ inline void load_tf32(Fragment& f, const float* p, unsigned ld) {
  wmma::load_matrix_sync(f, p, ld);
  round_tf32(f);
}

// hi (holding fp32 values) becomes their TF32 rounding, lo what that rounding left out.
template <class Fragment>
__device__ inline void split_tf32(Fragment& hi, Fragment& lo) {
#pragma unroll
  for (int e = 0; e < hi.num_elements; ++e) {
    const float rounded = tf32_round(hi.x[e]);
    lo.x[e] = tf32_round(hi.x[e] - rounded);
    hi.x[e] = rounded;
  }
}

// acc += X Y over k < K for X [16, K] row-major at x (its transpose stored row-major when
// XTransposed) and Y [K, 16] row-major at y (its transpose stored row-major when YTransposed).
template <int K, bool XTransposed = false, bool YTransposed = false, Dots kDots = Dots::kTf32>
__device__ inline void multiply_add(Acc16& acc, const float* x, unsigned ldx, const float* y,
                                    unsigned ldy) {
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 8) {
    std::conditional_t<XTransposed, TF32AT, TF32A> x_hi, x_lo;
    std::conditional_t<YTransposed, TF32BT, TF32B> y_hi, y_lo;
    wmma::load_matrix_sync(x_hi, XTransposed ? x + k0 * ldx : x + k0, ldx);
    wmma::load_matrix_sync(y_hi, YTransposed ? y + k0 : y + k0 * ldy, ldy);
    if constexpr (kDots == Dots::kSplitTf32) {
      split_tf32(x_hi, x_lo);
      split_tf32(y_hi, y_lo);
      wmma::mma_sync(acc, x_lo, y_hi, acc);
      wmma::mma_sync(acc, x_hi, y_lo, acc);
    } else {
      round_tf32(x_hi);
      round_tf32(y_hi);
    }
    wmma::mma_sync(acc, x_hi, y_hi, acc);
  }
}

enum class Scale { kNone, kUp, kDown, kUpBefore };  // 1, e^Λ, e^-Λ, e^Λ⁻

// Where a chunk's step t starts, and how an element is read: in the [B, T, H, N] inputs (through
// the read-only cache), or in a [16, N] copy of them in shared memory.
struct InputRows {
  HeadIndex head;
  int64_t t0;
  __device__ int64_t at(int t) const { return head.at(t0 + t); }
  template <class T>
  __device__ float read(const T* p, int64_t i) const {
    return read_only(p, i);
  }
};
template <int N>
struct StagedRows {
  __device__ int64_t at(int t) const { return int64_t{t} * N; }
  template <class T>
  __device__ float read(const T* p, int64_t i) const {
    return load(p, i);
  }
};

template <int N>
struct ChunkTiles {
  static constexpr int kWarps = N / 16;  // one warp per 16 columns
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kLd = N + 4;   // row stride of a [16, N] tile
  static constexpr int kPairLd = 20;  // row stride of a [16, 16] tile
  static constexpr int kTileFloats = kChunk * kLd;
  static constexpr int kPairFloats = 16 * kPairLd;

  // The chunk's rows of several [B, T, H, N] tensors (null: zeros) into tiles, each scaled per
  // element by e^{±Λ} (e.g. tile_of<Scale::kUp>(r_tile, r)), and Λ per key into `lambda` (a
  // [16, N] tile). Thread (n, parity) takes column n of every other row and, when parity is 0,
  // column n's decays. Every global load (read-only path) is issued before the first is used,
  // so the block waits for memory once; the caller synchronises before reading the tiles.
  template <Scale kScale, class T>
  struct Source {
    float* tile;
    const T* x;
    int ld;
  };
  template <Scale kScale, class T>
  __device__ static Source<kScale, T> tile_of(float* tile, const T* x, int ld = kLd) {
    return {tile, x, ld};
  }
  // `rows` says where the chunk's step t starts in every source (InputRows: the [B, T, H, N]
  // inputs; StagedRows: [16, N] copies in shared memory) and how an element is read.
  template <class Rows, class T, class... Sources>
  __device__ static void load(float* lambda, const T* z, const Rows& rows, int steps,
                              const Sources&... sources) {
    static_assert(kThreads == 2 * N, "two threads per column");
    constexpr int kRows = kChunk / 2;
    const int n = threadIdx.x % N, parity = threadIdx.x / N;
    float raw[sizeof...(Sources)][kRows];
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      const int t = parity + 2 * m;
      const bool inside = t < steps;
      const int64_t o = rows.at(t) + n;
      int i = 0;
      ((raw[i++][m] = inside && sources.x ? rows.read(sources.x, o) : 0.0f), ...);
    }
    if (parity == 0) {
      float log_d[kChunk];
#pragma unroll
      for (int t = 0; t < kChunk; ++t)
        log_d[t] = t < steps ? -kDecayScale * sigmoid(rows.read(z, rows.at(t) + n)) : 0.0f;
      float sum = 0;
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
        sum += log_d[t];
        lambda[t * kLd + n] = sum;
      }
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      const int t = parity + 2 * m;
      int i = 0;
      ((sources.tile[t * sources.ld + n] = raw[i++][m] * scale(sources, lambda, t, n)), ...);
    }
  }
  template <Scale kScale, class T>
  __device__ static float scale(const Source<kScale, T>&, const float* lambda, int t, int n) {
    if constexpr (kScale == Scale::kUp) return expf(lambda[t * kLd + n]);
    if constexpr (kScale == Scale::kDown) return expf(-lambda[t * kLd + n]);
    if constexpr (kScale == Scale::kUpBefore) return t > 0 ? expf(lambda[(t - 1) * kLd + n]) : 1.0f;
    return 1.0f;
  }
  // One warp: out = left right^T over N columns, kept on or below the diagonal (strictly below
  // when strict). [16, 16] row-major.
  template <Dots kDots = Dots::kTf32>
  __device__ static void step_pairs(const float* left, const float* right, float* out, bool strict,
                                    int left_ld = kLd) {
    Acc16 acc;
    wmma::fill_fragment(acc, 0.0f);
    multiply_add<N, false, true, kDots>(acc, left, left_ld, right, kLd);
    wmma::store_matrix_sync(out, acc, kPairLd, wmma::mem_row_major);
    __syncwarp();
    for (int e = threadIdx.x % 32; e < 256; e += 32) {
      const int t = e / 16, u = e % 16;
      if (u > t || (strict && u == t)) out[t * kPairLd + u] = 0.0f;
    }
    __syncwarp();
  }
};

// Two recurrences share the chunked WY machinery below: the forward over the state S, and the
// backward over the state's gradient, which is the same recurrence transposed and visited from
// the last chunk to the first. Per chunk, with Λ, Λ⁻ as above, L the chunk's last step and
//   Mab = stril((A e^Λ⁻)(B e^-Λ)^T), Mak = stril((A e^Λ⁻)(K e^-Λ)^T),
//   Mrb = tril((R e^Λ)(B e^-Λ)^T),   Mrk = tril((R e^Λ)(K e^-Λ)^T):
// forward, from the entry state S0:
//   SA = (A e^Λ⁻) S0^T + Mab SA + Mak V,  Y = (R e^Λ) S0^T + Mrb SA + Mrk V,
//   S_end = e^Λ_L ⊙ S0 + SA^T (B e^(Λ_L-Λ)) + V^T (K e^(Λ_L-Λ));
// state gradient, from G, the gradient reaching the chunk's last state (before its own y):
//   DSA = (B e^(Λ_L-Λ)) G^T + Mab^T DSA + Mrb^T DY,  DV = (K e^(Λ_L-Λ)) G^T + Mak^T DSA + Mrk^T DY,
//   G_before = e^Λ_L ⊙ G + DSA^T (A e^Λ⁻) + DY^T (R e^Λ)   (the gradient reaching S0).
// Both have one shape: with the "pass state" X (S or G), values V (v or dy), the first [16, N]
// tile solved into the WY form X_SA = W X^T + U,
//   X_SA = (I - M)^-1 (P X^T + Q V),  OUT = O X^T + Os X_SA + Ov V,
//   X_end = e^Λ_L ⊙ X + X_SA^T Ts + V^T Tv,
// which is what a chunk's operands below hold; the pass over chunks is then one kernel for both.
constexpr int64_t chunk_operand_floats(int64_t n) { return 5 * kChunk * n + 2 * 16 * 16 + n; }

// Per chunk (rows past T zero): [16, N] tiles W, U, O, Ts, Tv; [16, 16] Os, Ov; e^Λ_L [N].
//   forward:        O = R e^Λ,         Ts = B e^(Λ_L-Λ), Tv = K e^(Λ_L-Λ), Os = Mrb,   Ov = Mrk
//   state gradient: O = K e^(Λ_L-Λ),   Ts = A e^Λ⁻,      Tv = R e^Λ,       Os = Mak^T, Ov = Mrk^T
template <int N>
struct ChunkOperands {
  enum Tile { kW, kU, kOut, kSaToEnd, kValueToEnd, kTiles };
  enum Pair { kOutSa, kOutValue, kPairs };
  static constexpr int64_t kFloats = chunk_operand_floats(N);
  static_assert(kFloats == kTiles * kChunk * N + kPairs * 16 * 16 + N, "the layout below");
  __device__ static float* tile(float* chunk, int which) { return chunk + which * kChunk * N; }
  __device__ static float* pair(float* chunk, int which) {
    return chunk + kTiles * kChunk * N + which * 256;
  }
  __device__ static float* decay_end(float* chunk) {
    return chunk + kTiles * kChunk * N + kPairs * 256;
  }
};

enum class Pass { kForward, kStateGradient };

// The state gradient visits the chunks from the last. Both passes read their values (v, dy) and
// write their outputs (y, dv) in bf16; bf16 values are exact in TF32 and need no low part.
template <Pass kPass>
struct PassTraits {
  static constexpr bool kReverse = kPass == Pass::kStateGradient;
};

// (1) Every chunk in parallel: the pair matrices, the operands above, and W, U by substitution in
// fp32 (forward: (I - Mab) is lower triangular; state gradient: (I - Mab^T) upper), one column of
// [W | U] per thread. The steps on shared memory are shared with the fused kernel below.
template <int N>
struct PrepareChunk {
  using C = ChunkTiles<N>;
  enum Tile { kLambda, kB, kK, kV, kR, kTiles };
  enum Pair { kMab, kMak, kMrb, kMrk, kPairs };
  // [16, 2N] after the pairs: the right-hand sides of W (first A e^Λ⁻, the pairs' left operand)
  // and of U beside it.
  static constexpr int kRhsLd = 2 * N + 4;
  static constexpr int kFloats =
      kTiles * C::kTileFloats + kPairs * C::kPairFloats + kChunk * kRhsLd;
  static constexpr size_t shared_bytes() { return sizeof(float) * kFloats; }

  static constexpr int tile_at(int which) { return which * C::kTileFloats; }
  static constexpr int pair_at(int which) {
    return kTiles * C::kTileFloats + which * C::kPairFloats;
  }
  static constexpr int kRhsAt = pair_at(kPairs);

  float* base;  // kFloats of shared memory
  __device__ float* tile(int which) const { return base + tile_at(which); }
  __device__ float* pair(int which) const { return base + pair_at(which); }
  __device__ float* rhs() const { return base + kRhsAt; }

  // The chunk's tiles (Λ, B e^-Λ, K e^-Λ, the values, R e^Λ) and A e^Λ⁻ into W's right-hand
  // side; the caller synchronises before reading them.
  template <class Rows>
  __device__ void load(const Inputs<__nv_bfloat16>& in, const __nv_bfloat16* values,
                       const Rows& rows, int steps) const {
    C::load(tile(kLambda), in.z, rows, steps,
            C::template tile_of<Scale::kUpBefore>(rhs(), in.a, kRhsLd),
            C::template tile_of<Scale::kDown>(tile(kB), in.b),
            C::template tile_of<Scale::kDown>(tile(kK), in.k),
            C::template tile_of<Scale::kNone>(tile(kV), values),
            C::template tile_of<Scale::kUp>(tile(kR), in.r));
  }

  // After load: the pair matrices, then U's right-hand side, Mak V (forward) or Mrb^T DY (state
  // gradient), beside W's. W and U (the state's path) need Mab and Mak (forward) or Mab and Mrb
  // (state gradient): those are split. The caller synchronises before reading U's side.
  template <Pass kPass>
  __device__ void pairs_and_u_side() const {
    constexpr bool kReverse = PassTraits<kPass>::kReverse;
    constexpr int kUPair = kReverse ? kMrb : kMak;
    const int warp = threadIdx.x / 32;
    for (int which = warp; which < kPairs; which += C::kWarps) {
      const bool from_a = which == kMab || which == kMak, with_b = which == kMab || which == kMrb;
      float *left = from_a ? rhs() : tile(kR), *right = tile(with_b ? kB : kK);
      const int left_ld = from_a ? kRhsLd : C::kLd;
      if (which == kMab || which == kUPair)
        C::template step_pairs<Dots::kSplitTf32>(left, right, pair(which), from_a, left_ld);
      else
        C::template step_pairs<Dots::kTf32>(left, right, pair(which), from_a, left_ld);
    }
    __syncthreads();
    Acc16 acc;
    wmma::fill_fragment(acc, 0.0f);
    multiply_add<16, kReverse, false, Dots::kSplitTf32>(acc, pair(kUPair), C::kPairLd,
                                                        tile(kV) + 16 * warp, C::kLd);
    wmma::store_matrix_sync(rhs() + N + 16 * warp, acc, kRhsLd, wmma::mem_row_major);
  }

  // e^Λ_L for key n: (b e^-Λ) e^Λ_L = b e^(Λ_L-Λ).
  __device__ float decay_end(int n) const { return expf(tile(kLambda)[(kChunk - 1) * C::kLd + n]); }

  // A column of [W | U] from its right-hand side x, in place: the forward substitutes from the
  // first step, the state gradient from the last (Mab transposed).
  template <Pass kPass>
  __device__ void solve(float (&x)[kChunk]) const {
    const float* mab = pair(kMab);
    if constexpr (PassTraits<kPass>::kReverse) {
#pragma unroll
      for (int t = kChunk - 1; t >= 0; --t)
#pragma unroll
        for (int u = t + 1; u < kChunk; ++u) x[t] = fmaf(mab[u * C::kPairLd + t], x[u], x[t]);
    } else {
#pragma unroll
      for (int t = 0; t < kChunk; ++t)
#pragma unroll
        for (int u = 0; u < t; ++u) x[t] = fmaf(mab[t * C::kPairLd + u], x[u], x[t]);
    }
  }
};

// At most 85 registers a thread, so that six blocks of 128 threads (N = 64; the shared memory's
// limit too) fit on an SM.
template <int N, Pass kPass>
__global__ void __launch_bounds__(ChunkTiles<N>::kThreads, 768 / ChunkTiles<N>::kThreads)
    prepare_kernel(Wkv7Shape s, Inputs<__nv_bfloat16> in, const __nv_bfloat16* values,
                   float* chunk_out) {
  using C = ChunkTiles<N>;
  using F = ChunkOperands<N>;
  using P = PrepareChunk<N>;
  constexpr bool kReverse = PassTraits<kPass>::kReverse;
  extern __shared__ __align__(32) float prepare_shared[];
  const P chunk{prepare_shared};
  float* rhs = chunk.rhs();
  constexpr int kRhsLd = P::kRhsLd;
  const int tid = threadIdx.x;
  const int64_t chunks = chunk_count(s), bh = blockIdx.x / chunks, index = blockIdx.x % chunks;
  const int64_t t0 = index * kChunk;
  const int steps = chunk_steps(s, t0);
  float* out = chunk_out + (bh * chunks + index) * F::kFloats;

  chunk.load(in, values, InputRows{HeadIndex(s, bh), t0}, steps);
  __syncthreads();
  chunk.template pairs_and_u_side<kPass>();
  {
    const int n = tid % N;
    const float decay_end = chunk.decay_end(n);
#pragma unroll
    for (int t = tid / N; t < kChunk; t += 2) {
      const float b_to_end = chunk.tile(P::kB)[t * C::kLd + n] * decay_end,
                  k_to_end = chunk.tile(P::kK)[t * C::kLd + n] * decay_end,
                  r_up = chunk.tile(P::kR)[t * C::kLd + n];
      float& rhs_w = rhs[t * kRhsLd + n];  // A e^Λ⁻, read by the pairs above
      F::tile(out, F::kOut)[t * N + n] = kReverse ? k_to_end : r_up;
      F::tile(out, F::kSaToEnd)[t * N + n] = kReverse ? rhs_w : b_to_end;
      F::tile(out, F::kValueToEnd)[t * N + n] = kReverse ? r_up : k_to_end;
      if constexpr (kReverse) rhs_w = b_to_end;
    }
    if (tid < N) F::decay_end(out)[n] = decay_end;
  }
  for (int e = tid; e < 2 * 256; e += C::kThreads) {
    const int t = e % 256 / 16, u = e % 16;
    F::pair(out, e / 256)[e % 256] =
        kReverse ? chunk.pair(e < 256 ? P::kMak : P::kMrk)[u * C::kPairLd + t]  // transposed
                 : chunk.pair(e < 256 ? P::kMrb : P::kMrk)[t * C::kPairLd + u];
  }
  __syncthreads();
  // kThreads = 2N: thread `col` solves column col of [W | U].
  const int col = tid;
  float x[kChunk];
#pragma unroll
  for (int t = 0; t < kChunk; ++t) x[t] = rhs[t * kRhsLd + col];
  chunk.template solve<kPass>(x);
  float* solved = F::tile(out, col < N ? F::kW : F::kU);
#pragma unroll
  for (int t = 0; t < kChunk; ++t) solved[t * N + col % N] = x[t];
}

// m16n8k8 TF32 tensor-core step on registers (PTX layouts, g = lane / 4, q = lane % 4):
// A (16x8): a0 (g, q), a1 (g+8, q), a2 (g, q+4), a3 (g+8, q+4); B (8x8): b0 (q, g), b1 (q+4, g);
// C/D (16x8): c0 (g, 2q), c1 (g, 2q+1), c2 (g+8, 2q), c3 (g+8, 2q+1).
__device__ inline uint32_t tf32_bits(float x) { return __float_as_uint(tf32_round(x)); }
__device__ inline void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// A register operand of mma_tf32 (Count = 4: A, 2: B), split (Dots::kSplitTf32) or not.
template <int Count, bool kSplit>
struct Tf32Operand {
  static constexpr bool kIsSplit = kSplit;
  uint32_t hi[Count], lo[kSplit ? Count : 1];
  __device__ void set(int c, float x) {
    hi[c] = tf32_bits(x);
    if constexpr (kSplit) lo[c] = tf32_bits(x - __uint_as_float(hi[c]));
  }
};
// d += a b with the parts each operand has (an operand exact in TF32 needs no low part).
template <class A, class B>
__device__ inline void mma(float (&d)[4], const A& a, const B& b) {
  if constexpr (A::kIsSplit) mma_tf32(d, a.lo, b.hi);
  if constexpr (B::kIsSplit) mma_tf32(d, a.hi, b.lo);
  mma_tf32(d, a.hi, b.hi);
}

__device__ inline void store_pair(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}
__device__ inline void store_pair(float* p, float x, float y) {
  *reinterpret_cast<float2*>(p) = make_float2(x, y);
}

// (2) The pass over chunks: one block per (batch, head), one warp per 16 rows of the pass state
// (rows evolve independently), held in the warp's registers as m16n8 accumulators (rows i, 8
// keys per tile) in fp32 throughout. Per chunk (the forward from the first, the state gradient
// from the last): X_SA = W X^T + U, OUT = O X^T + Os X_SA + Ov V, X_end as above.
// The products with X^T take the accumulators as B operands directly: a dot over keys may take
// them in any order, and reading key 2q as k = q and key 2q+1 as k = q+4 (on the A side too)
// makes an accumulator's (c0, c1) the B fragment of rows 0-7 and (c2, c3) that of rows 8-15.

// Where a pass step finds a chunk's operands (ChunkOperands' names) relative to one base in
// shared memory: a Layout gives w, u, out, sa_to_end, value_to_end (t, key) of the [16, N] tiles,
// out_sa and out_value (t, u) of the [16, 16] pairs, decay_end (key) and value (t, i), all at
// offsets known at compile time (so no pointers are held in registers).
// The warp's 16 rows of a pass state [N, N] (row-major), from `state_in` (null: zeros) or to
// `state_out`.
template <int N>
__device__ void load_pass_state(float (&state)[N / 8][4], const float* state_in) {
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4, i0 = 16 * (threadIdx.x / 32);
#pragma unroll
  for (int kt = 0; kt < N / 8; ++kt)
#pragma unroll
    for (int c = 0; c < 4; ++c)
      state[kt][c] =
          state_in ? state_in[(i0 + g + 8 * (c / 2)) * N + 8 * kt + 2 * q + c % 2] : 0.0f;
}
template <int N>
__device__ void store_pass_state(const float (&state)[N / 8][4], float* state_out) {
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4, i0 = 16 * (threadIdx.x / 32);
#pragma unroll
  for (int kt = 0; kt < N / 8; ++kt)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      *reinterpret_cast<float2*>(state_out + (i0 + g + 8 * half) * N + 8 * kt + 2 * q) =
          make_float2(state[kt][2 * half], state[kt][2 * half + 1]);
}

constexpr int kSaLd = 20;  // row stride of a warp's [16 steps, 16 rows] X_SA tile

// One chunk of a pass on the warp's 16 rows: writes the state entering the chunk to
// `entry_out` (when not null), OUT and (when x_sa_out is not null) X_SA for the chunk's steps
// starting at row `first` of the [B, T, H, N] outputs, and advances the state. sa_tile: the
// warp's [16, kSaLd] scratch.
template <int N, class Layout>
__device__ void pass_chunk(float (&state)[N / 8][4], const float* base, bool has_values, int steps,
                           float* sa_tile, float* entry_out, const HeadIndex& head, int64_t t0,
                           __nv_bfloat16* out_values, float* x_sa_out) {
  constexpr int kKeyTiles = N / 8;
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4, i0 = 16 * (threadIdx.x / 32);
  auto value = [&](int t, int i) {
    return has_values && t < steps ? Layout::value(base, t, i) : 0.0f;
  };
  if (entry_out) store_pass_state<N>(state, entry_out);
  // X_SA and the pass state's part of OUT, two halves of the warp's 16 rows each.
  float sa[2][4], out[2][4];
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      sa[half][c] = Layout::u(base, g + 8 * (c / 2), i0 + 8 * half + 2 * q + c % 2);
      out[half][c] = 0.0f;
    }
#pragma unroll
  for (int kt = 0; kt < kKeyTiles; ++kt) {
    Tf32Operand<4, true> aw;
    Tf32Operand<4, false> ao;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int t = g + 8 * (c % 2), j = 8 * kt + 2 * q + c / 2;  // keys read as (2q, 2q+1)
      aw.set(c, Layout::w(base, t, j));
      ao.set(c, Layout::out(base, t, j));
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      Tf32Operand<2, true> b;
      b.set(0, state[kt][2 * half]);
      b.set(1, state[kt][2 * half + 1]);
      mma(sa[half], aw, b);
      mma_tf32(out[half], ao.hi, b.hi);  // y/dv only: X's high part is enough
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int c = 0; c < 4; ++c)
      sa_tile[(g + 8 * (c / 2)) * kSaLd + 8 * half + 2 * q + c % 2] = sa[half][c];
  __syncwarp();
  // OUT += Os X_SA + Ov V over the chunk's steps.
#pragma unroll
  for (int s0 = 0; s0 < 16; s0 += 8) {
    Tf32Operand<4, false> a_sa, a_v;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int t = g + 8 * (c % 2), u = s0 + q + 4 * (c / 2);
      a_sa.set(c, Layout::out_sa(base, t, u));
      a_v.set(c, Layout::out_value(base, t, u));
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = 8 * half + g;
      Tf32Operand<2, false> b_sa, b_v;
      b_sa.set(0, sa_tile[(s0 + q) * kSaLd + i]);
      b_sa.set(1, sa_tile[(s0 + q + 4) * kSaLd + i]);
      b_v.set(0, value(s0 + q, i0 + i));
      b_v.set(1, value(s0 + q + 4, i0 + i));
      mma(out[half], a_sa, b_sa);
      mma(out[half], a_v, b_v);
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      const int t = g + 8 * row, i = i0 + 8 * half + 2 * q;
      if (t >= steps) continue;
      const int64_t at = head.at(t0 + t) + i;
      store_pair(out_values + at, out[half][2 * row], out[half][2 * row + 1]);
      if (x_sa_out) store_pair(x_sa_out + at, sa[half][2 * row], sa[half][2 * row + 1]);
    }
  // X_end = e^Λ_L ⊙ X + X_SA^T Ts + V^T Tv; A fragments (rows i, k = step).
  Tf32Operand<4, true> a_sa[2];
  Tf32Operand<4, false> a_v[2];
#pragma unroll
  for (int s0 = 0; s0 < 16; s0 += 8)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int t = s0 + q + 4 * (c / 2), i = g + 8 * (c % 2);
      a_sa[s0 / 8].set(c, sa_tile[t * kSaLd + i]);
      a_v[s0 / 8].set(c, value(t, i0 + i));
    }
#pragma unroll
  for (int kt = 0; kt < kKeyTiles; ++kt) {
    const int j = 8 * kt + 2 * q;
#pragma unroll
    for (int c = 0; c < 4; ++c) state[kt][c] *= Layout::decay_end(base, j + c % 2);
#pragma unroll
    for (int s0 = 0; s0 < 16; s0 += 8) {
      Tf32Operand<2, true> b_sa, b_v;
      b_sa.set(0, Layout::sa_to_end(base, s0 + q, 8 * kt + g));
      b_sa.set(1, Layout::sa_to_end(base, s0 + q + 4, 8 * kt + g));
      b_v.set(0, Layout::value_to_end(base, s0 + q, 8 * kt + g));
      b_v.set(1, Layout::value_to_end(base, s0 + q + 4, 8 * kt + g));
      mma(state[kt], a_sa[s0 / 8], b_sa);
      mma(state[kt], a_v[s0 / 8], b_v);
    }
  }
}

// The operands as prepare_kernel writes them (ChunkOperands), followed by the values in bf16.
template <int N>
struct StoredLayout {
  using F = ChunkOperands<N>;
  template <int Which>
  __device__ static float tile(const float* base, int t, int n) {
    return base[Which * kChunk * N + t * N + n];
  }
  __device__ static float w(const float* b, int t, int n) { return tile<F::kW>(b, t, n); }
  __device__ static float u(const float* b, int t, int n) { return tile<F::kU>(b, t, n); }
  __device__ static float out(const float* b, int t, int n) { return tile<F::kOut>(b, t, n); }
  __device__ static float sa_to_end(const float* b, int t, int n) {
    return tile<F::kSaToEnd>(b, t, n);
  }
  __device__ static float value_to_end(const float* b, int t, int n) {
    return tile<F::kValueToEnd>(b, t, n);
  }
  __device__ static float out_sa(const float* b, int t, int u) {
    return b[F::kTiles * kChunk * N + F::kOutSa * 256 + t * 16 + u];
  }
  __device__ static float out_value(const float* b, int t, int u) {
    return b[F::kTiles * kChunk * N + F::kOutValue * 256 + t * 16 + u];
  }
  __device__ static float decay_end(const float* b, int n) {
    return b[F::kTiles * kChunk * N + F::kPairs * 256 + n];
  }
  __device__ static float value(const float* b, int t, int i) {
    return load(reinterpret_cast<const __nv_bfloat16*>(b + F::kFloats), t * N + i);
  }
};

// The two-kernel form's pass: the operands come from prepare_kernel through global memory; the
// next chunk's are copied into shared memory (asynchronously) while the warps work on the
// current one.
template <int N, Pass kPass>
struct ChunkPass {
  using F = ChunkOperands<N>;
  using Value = __nv_bfloat16;
  static constexpr int kWarps = N / 16, kThreads = 32 * kWarps;
  static constexpr int kValuesPerCopy = 16 / sizeof(Value);  // one 16-byte cp.async
  // One buffer: the chunk's operands, then its values [16, N].
  static constexpr int kBufferFloats =
      static_cast<int>(F::kFloats) + kChunk * N * static_cast<int>(sizeof(Value)) / 4;
  static_assert(kBufferFloats % 4 == 0, "16-byte copies");
  static constexpr size_t shared_bytes() {
    return sizeof(float) * (2 * kBufferFloats + kWarps * 16 * kSaLd);
  }
};

// The arguments per pass (values and entry may be null: zeros):
//   forward:        values v,  entry s0,       out y,  exit s_final, chunk_entries the chunk
//                   states, x_sa sa;
//   state gradient: values dy, entry ds_final, out dv, exit ds0,     chunk_entries the gradients
//                   at the chunks' ends, x_sa dsa.
// At N = 64 at most 128 registers, so that four blocks fit an SM (as many as shared memory
// allows).
template <int N, Pass kPass>
__global__ void __launch_bounds__(ChunkPass<N, kPass>::kThreads, N == 64 ? 4 : 1)
    chunk_pass_kernel(Wkv7Shape s, const __nv_bfloat16* values, const float* entry,
                      const float* chunk_in, __nv_bfloat16* out_values, float* exit,
                      float* chunk_entries, float* x_sa_out) {
  using P = ChunkPass<N, kPass>;
  using F = ChunkOperands<N>;
  using Value = typename P::Value;
  constexpr int kPerCopy = P::kValuesPerCopy;
  extern __shared__ __align__(32) float pass_shared[];
  const int tid = threadIdx.x, warp = tid / 32;
  float* sa_tile = pass_shared + 2 * P::kBufferFloats + warp * 16 * kSaLd;
  const int64_t bh = blockIdx.x, chunks = chunk_count(s);
  const HeadIndex head(s, bh);
  auto chunk_at = [&](int64_t visit) {
    return PassTraits<kPass>::kReverse ? chunks - 1 - visit : visit;
  };
  auto buffer = [&](int64_t visit) { return pass_shared + (visit % 2) * P::kBufferFloats; };
  auto fetch = [&](int64_t visit) {
    const int64_t chunk = chunk_at(visit);
    float* to = buffer(visit);
    const float* from = chunk_in + (bh * chunks + chunk) * F::kFloats;
    for (int e = tid; e < F::kFloats / 4; e += P::kThreads)
      __pipeline_memcpy_async(to + 4 * e, from + 4 * e, 16);
    auto* values_to = reinterpret_cast<Value*>(to + F::kFloats);
    const int64_t t0 = chunk * kChunk;
    for (int e = tid; values && e < kChunk * N / kPerCopy; e += P::kThreads) {
      const int t = e / (N / kPerCopy), n = kPerCopy * (e % (N / kPerCopy));
      if (t0 + t < s.T)
        __pipeline_memcpy_async(values_to + t * N + n, values + head.at(t0 + t) + n, 16);
    }
    __pipeline_commit();
  };

  float state[N / 8][4];
  load_pass_state<N>(state, entry ? entry + bh * N * N : nullptr);
  fetch(0);
  for (int64_t visit = 0; visit < chunks; ++visit) {
    const int64_t chunk = chunk_at(visit), t0 = chunk * kChunk;
    if (visit + 1 < chunks) {
      fetch(visit + 1);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();
    pass_chunk<N, StoredLayout<N>>(
        state, buffer(visit), values != nullptr, chunk_steps(s, t0), sa_tile,
        chunk_entries ? chunk_entries + (bh * chunks + chunk) * N * N : nullptr, head, t0,
        out_values, x_sa_out);
    __syncthreads();  // the buffer is refilled next; sa_tile is rewritten
  }
  store_pass_state<N>(state, exit + bh * N * N);
}

// The fused form: one kernel, one block per (batch, head), each chunk's operands built in shared
// memory right before its pass step (prepare_kernel's steps; the fp32 operands, about twice the
// bf16 inputs, never reach global memory). The chunk's bf16 inputs are staged (cp.async) while
// the previous chunk is worked on. In shared memory after the solve:
//   forward:        W, U in rhs; O = R e^Λ; Ts = B e^(Λ_L-Λ), Tv = K e^(Λ_L-Λ) (B, K scaled in
//                   place once the pairs are made); Os, Ov = Mrb, Mrk;
//   state gradient: W in B's tile (its right-hand side B e^(Λ_L-Λ) was there), U in rhs;
//                   O = K e^(Λ_L-Λ); Ts = A e^Λ⁻ (rhs, kept); Tv = R e^Λ; Os, Ov = Mak^T, Mrk^T.
template <int N>
struct FusedChunks {
  using P = PrepareChunk<N>;
  static constexpr int kThreads = ChunkTiles<N>::kThreads, kWarps = kThreads / 32;
  enum Staged { kR, kZ, kK, kA, kB, kValues, kStaged };  // bf16 [16, N] copies
  static constexpr int kDecayAt = P::kFloats, kSaAt = kDecayAt + N,
                       kStagingAt = kSaAt + kWarps * 16 * kSaLd;
  static_assert(kStagingAt % 4 == 0, "16-byte aligned copies");
  static constexpr size_t shared_bytes() {
    return sizeof(float) * kStagingAt + sizeof(__nv_bfloat16) * kStaged * kChunk * N;
  }
};

// The operands of a chunk built in shared memory (see FusedChunks), once W and U are solved.
template <int N, Pass kPass>
struct BuiltLayout {
  using C = ChunkTiles<N>;
  using P = PrepareChunk<N>;
  static constexpr bool kReverse = PassTraits<kPass>::kReverse;
  template <int At, int Ld>
  __device__ static float at(const float* base, int t, int n) {
    return base[At + t * Ld + n];
  }
  static constexpr int kB = P::tile_at(P::kB), kK = P::tile_at(P::kK), kR = P::tile_at(P::kR);
  // The pairs, transposed for the state gradient.
  template <int Which>
  __device__ static float pair(const float* base, int t, int u) {
    return kReverse ? base[P::pair_at(Which) + u * C::kPairLd + t]
                    : base[P::pair_at(Which) + t * C::kPairLd + u];
  }
  __device__ static float w(const float* b, int t, int n) {
    return kReverse ? at<kB, C::kLd>(b, t, n) : at<P::kRhsAt, P::kRhsLd>(b, t, n);
  }
  __device__ static float u(const float* b, int t, int n) {
    return at<P::kRhsAt + N, P::kRhsLd>(b, t, n);
  }
  __device__ static float out(const float* b, int t, int n) {
    return kReverse ? at<kK, C::kLd>(b, t, n) : at<kR, C::kLd>(b, t, n);
  }
  __device__ static float sa_to_end(const float* b, int t, int n) {
    return kReverse ? at<P::kRhsAt, P::kRhsLd>(b, t, n) : at<kB, C::kLd>(b, t, n);
  }
  __device__ static float value_to_end(const float* b, int t, int n) {
    return kReverse ? at<kR, C::kLd>(b, t, n) : at<kK, C::kLd>(b, t, n);
  }
  __device__ static float out_sa(const float* b, int t, int u) {
    return pair < kReverse ? P::kMak : P::kMrb > (b, t, u);
  }
  __device__ static float out_value(const float* b, int t, int u) { return pair<P::kMrk>(b, t, u); }
  __device__ static float decay_end(const float* b, int n) {
    return b[FusedChunks<N>::kDecayAt + n];
  }
  __device__ static float value(const float* b, int t, int i) {
    return at<P::tile_at(P::kV), C::kLd>(b, t, i);
  }
};

// The arguments are chunk_pass_kernel's, with the inputs instead of prepare_kernel's operands.
template <int N, Pass kPass>
__global__ void __launch_bounds__(ChunkTiles<N>::kThreads, 512 / ChunkTiles<N>::kThreads)
    fused_chunk_pass_kernel(Wkv7Shape s, Inputs<__nv_bfloat16> in, const __nv_bfloat16* values,
                            const float* entry, __nv_bfloat16* out_values, float* exit,
                            float* chunk_entries, float* x_sa_out) {
  using C = ChunkTiles<N>;
  using P = PrepareChunk<N>;
  using Fused = FusedChunks<N>;
  constexpr bool kReverse = PassTraits<kPass>::kReverse;
  constexpr int kRhsLd = P::kRhsLd;
  extern __shared__ __align__(32) float fused_shared[];
  const P chunk{fused_shared};
  float* decay_end = fused_shared + Fused::kDecayAt;
  const int tid = threadIdx.x, warp = tid / 32;
  float* sa_tile = fused_shared + Fused::kSaAt + warp * 16 * kSaLd;
  auto* staging = reinterpret_cast<__nv_bfloat16*>(fused_shared + Fused::kStagingAt);
  auto staged = [&](int which) { return staging + which * kChunk * N; };
  const int64_t bh = blockIdx.x, chunks = chunk_count(s);
  const HeadIndex head(s, bh);
  auto chunk_at = [&](int64_t visit) { return kReverse ? chunks - 1 - visit : visit; };
  auto stage = [&](int64_t visit) {
    const int64_t t0 = chunk_at(visit) * kChunk;
    const int steps = chunk_steps(s, t0);
    constexpr int kCopies = kChunk * N / 8;  // 16-byte copies of one [16, N] bf16 tile
#pragma unroll
    for (int which = 0; which < Fused::kStaged; ++which) {
      const __nv_bfloat16* from = which == Fused::kR   ? in.r
                                  : which == Fused::kZ ? in.z
                                  : which == Fused::kK ? in.k
                                  : which == Fused::kA ? in.a
                                  : which == Fused::kB ? in.b
                                                       : values;
      if (!from) continue;
      for (int e = tid; e < kCopies; e += C::kThreads) {
        const int t = e / (N / 8), n = 8 * (e % (N / 8));
        if (t < steps)
          __pipeline_memcpy_async(staged(which) + t * N + n, from + head.at(t0 + t) + n, 16);
      }
    }
    __pipeline_commit();
  };
  const Inputs<__nv_bfloat16> staged_in{staged(Fused::kR), staged(Fused::kZ), staged(Fused::kK),
                                        nullptr,           staged(Fused::kA), staged(Fused::kB)};
  const __nv_bfloat16* staged_values = values ? staged(Fused::kValues) : nullptr;
  float* b_tile = chunk.tile(P::kB);
  float* rhs = chunk.rhs();
  float* k_tile = chunk.tile(P::kK);

  float state[N / 8][4];
  load_pass_state<N>(state, entry ? entry + bh * N * N : nullptr);
  stage(0);
  for (int64_t visit = 0; visit < chunks; ++visit) {
    const int64_t index = chunk_at(visit), t0 = index * kChunk;
    const int steps = chunk_steps(s, t0);
    __pipeline_wait_prior(0);
    __syncthreads();  // the chunk is staged; the previous pass step is done with the tiles
    chunk.load(staged_in, staged_values, StagedRows<N>{}, steps);
    __syncthreads();  // the staging is read: the next chunk's copies may start
    if (visit + 1 < chunks) stage(visit + 1);
    chunk.template pairs_and_u_side<kPass>();
    {  // B and K are read by the pairs: scale them by e^Λ_L (B: Ts or W's right-hand side).
      const int n = tid % N;
      const float to_end = chunk.decay_end(n);
#pragma unroll
      for (int t = tid / N; t < kChunk; t += 2) {
        b_tile[t * C::kLd + n] *= to_end;
        k_tile[t * C::kLd + n] *= to_end;
      }
      if (tid < N) decay_end[n] = to_end;
    }
    __syncthreads();
    {  // kThreads = 2N: thread `col` solves column col of [W | U] in place.
      const int col = tid;
      float* column = kReverse && col < N ? b_tile + col : rhs + col;
      const int ld = kReverse && col < N ? C::kLd : kRhsLd;
      float x[kChunk];
#pragma unroll
      for (int t = 0; t < kChunk; ++t) x[t] = column[t * ld];
      chunk.template solve<kPass>(x);
#pragma unroll
      for (int t = 0; t < kChunk; ++t) column[t * ld] = x[t];
    }
    __syncthreads();
    pass_chunk<N, BuiltLayout<N, kPass>>(
        state, fused_shared, values != nullptr, steps, sa_tile,
        chunk_entries ? chunk_entries + (bh * chunks + index) * N * N : nullptr, head, t0,
        out_values, x_sa_out);
  }
  store_pass_state<N>(state, exit + bh * N * N);
}

// Backward (2), every chunk in parallel. Given sa and dsa from the passes over time, a chunk's
// states and the gradients reaching them (g_t, with g_L = G + dy_L r_L^T) follow
//   S_t = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T
//   g_t = g_{t+1} diag(d_{t+1}) + dsa_{t+1} a_{t+1}^T + dy_t r_t^T
// so, with S0 the chunk's entry state and G the gradient at its end:
//   dr = e^Λ ⊙ (DY S0 + P1 (B e^-Λ) + P2 (K e^-Λ))       P1 = tril(DY SA^T), P2 = tril(DY V^T)
//   da = e^Λ⁻ ⊙ (DSA S0 + Q1 (B e^-Λ) + Q2 (K e^-Λ))     Q1, Q2: the same with DSA, strictly lower
//   dk = e^(Λ_L-Λ) ⊙ (V G) + e^-Λ ⊙ (P2^T (R e^Λ) + Q2^T (A e^Λ⁻)),  db: the same with SA, P1, Q1.
// The decay's gradient needs no states: E_t = Σ_i g_t[i,:] ⊙ S_t[i,:] gives
// dlog d_t = E_t - b_t db_t - k_t dk_t and E_{t-1} = dlog d_t + a_t da_t + r_{t-1} dr_{t-1};
// E_L is G ⊙ S_L summed over rows, with S_L = e^Λ_L ⊙ (S0 + SA^T (B e^-Λ) + V^T (K e^-Λ)), which
// reuses V G and SA G.
template <int N>
struct GradientChunk {
  using C = ChunkTiles<N>;
  enum Tile { kDy, kSa, kDsa, kV, kBDown, kKDown, kRUp, kAUpBefore, kLambda, kTiles };
  enum Pair { kP1, kP2, kQ1, kQ2, kPairs };
  enum Product { kDr, kDa, kVG, kSaG, kDkIntra, kDbIntra, kProducts };  // per warp, [16, 16] each
  // S0 and G ([N, kLd] each), later reused for the pair matrices and the warps' products.
  static constexpr int kStateFloats = 2 * N * C::kLd;
  static constexpr int kReusedFloats = kPairs * C::kPairFloats + C::kWarps * kProducts * 256;
  static constexpr int kRegionFloats = kStateFloats > kReusedFloats ? kStateFloats : kReusedFloats;
  static constexpr size_t shared_bytes() {
    return sizeof(float) * (kTiles * C::kTileFloats + kRegionFloats);
  }
};

template <int N>
__global__ void __launch_bounds__(ChunkTiles<N>::kThreads)
    chunk_grad_tensor_core_kernel(Wkv7Shape s, Inputs<__nv_bfloat16> in, const __nv_bfloat16* dy,
                                  const float* sa, const float* dsa, const float* chunk_states,
                                  const float* chunk_grads, __nv_bfloat16* dr, __nv_bfloat16* dz,
                                  __nv_bfloat16* dk, __nv_bfloat16* da, __nv_bfloat16* db) {
  using C = ChunkTiles<N>;
  using K = GradientChunk<N>;
  extern __shared__ __align__(32) float chunk_shared[];
  auto tile = [&](int which) { return chunk_shared + which * C::kTileFloats; };
  float* region = chunk_shared + K::kTiles * C::kTileFloats;
  float *S0 = region, *G = region + N * C::kLd;
  auto pair = [&](int which) { return region + which * C::kPairFloats; };
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  float* products = region + K::kPairs * C::kPairFloats + warp * K::kProducts * 256;
  auto product = [&](int which) { return products + which * 256; };
  const int64_t chunks = chunk_count(s), bh = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t t0 = chunk * kChunk;
  const int steps = chunk_steps(s, t0);
  const HeadIndex head(s, bh);

  // Warp w ends with keys 16w .. 16w+15, one per lane below 16; their logits are fetched now.
  const int j0 = 16 * warp, key = lane % 16, j = j0 + key;
  float z_own[kChunk];
#pragma unroll
  for (int t = 0; t < kChunk; ++t)
    z_own[t] = lane < 16 && t < steps ? read_only(in.z, head.at(t0 + t) + j) : 0.0f;
  // The chunk's entry state and end gradient arrive asynchronously while the tiles load.
  for (int e = tid; e < N * N / 4; e += C::kThreads) {
    const int row = 4 * e / N, column = 4 * e % N;
    const int64_t from = (bh * chunks + chunk) * N * N + 4 * e;
    __pipeline_memcpy_async(S0 + row * C::kLd + column, chunk_states + from, 16);
    __pipeline_memcpy_async(G + row * C::kLd + column, chunk_grads + from, 16);
  }
  __pipeline_commit();
  float* lambda = tile(K::kLambda);
  C::load(lambda, in.z, InputRows{head, t0}, steps,
          C::template tile_of<Scale::kNone>(tile(K::kDy), dy),
          C::template tile_of<Scale::kNone>(tile(K::kSa), sa),
          C::template tile_of<Scale::kNone>(tile(K::kDsa), dsa),
          C::template tile_of<Scale::kNone>(tile(K::kV), in.v),
          C::template tile_of<Scale::kDown>(tile(K::kBDown), in.b),
          C::template tile_of<Scale::kDown>(tile(K::kKDown), in.k),
          C::template tile_of<Scale::kUp>(tile(K::kRUp), in.r),
          C::template tile_of<Scale::kUpBefore>(tile(K::kAUpBefore), in.a));
  __pipeline_wait_prior(0);
  __syncthreads();

  Acc16 acc[K::kProducts];
#pragma unroll
  for (int p = 0; p < K::kProducts; ++p) wmma::fill_fragment(acc[p], 0.0f);
#pragma unroll
  for (int k0 = 0; k0 < N; k0 += 8) {  // the four products with S0 and G share their loads
    TF32A dy_a, dsa_a, v_a, sa_a;
    TF32B s0_b, g_b;
    load_tf32(dy_a, tile(K::kDy) + k0, C::kLd);
    load_tf32(dsa_a, tile(K::kDsa) + k0, C::kLd);
    load_tf32(v_a, tile(K::kV) + k0, C::kLd);
    load_tf32(sa_a, tile(K::kSa) + k0, C::kLd);
    load_tf32(s0_b, S0 + k0 * C::kLd + j0, C::kLd);
    load_tf32(g_b, G + k0 * C::kLd + j0, C::kLd);
    wmma::mma_sync(acc[K::kDr], dy_a, s0_b, acc[K::kDr]);
    wmma::mma_sync(acc[K::kDa], dsa_a, s0_b, acc[K::kDa]);
    wmma::mma_sync(acc[K::kVG], v_a, g_b, acc[K::kVG]);
    wmma::mma_sync(acc[K::kSaG], sa_a, g_b, acc[K::kSaG]);
  }
  // Σ_i G[i][j] S0[i][j] for the warp's keys, half the rows per half-warp.
  float state_dot = 0;
  for (int i = lane / 16; i < N; i += 2)
    state_dot = fmaf(G[i * C::kLd + j], S0[i * C::kLd + j], state_dot);
  state_dot += __shfl_xor_sync(0xffffffffu, state_dot, 16);
  __syncthreads();  // S0 and G are read: their space takes the pair matrices and the products

  for (int which = warp; which < K::kPairs; which += C::kWarps) {
    const bool from_dy = which == K::kP1 || which == K::kP2,
               with_sa = which == K::kP1 || which == K::kQ1;
    C::step_pairs(tile(from_dy ? K::kDy : K::kDsa), tile(with_sa ? K::kSa : K::kV), pair(which),
                  !from_dy);
  }
  __syncthreads();
  multiply_add<16>(acc[K::kDr], pair(K::kP1), C::kPairLd, tile(K::kBDown) + j0, C::kLd);
  multiply_add<16>(acc[K::kDr], pair(K::kP2), C::kPairLd, tile(K::kKDown) + j0, C::kLd);
  multiply_add<16>(acc[K::kDa], pair(K::kQ1), C::kPairLd, tile(K::kBDown) + j0, C::kLd);
  multiply_add<16>(acc[K::kDa], pair(K::kQ2), C::kPairLd, tile(K::kKDown) + j0, C::kLd);
  multiply_add<16, true>(acc[K::kDkIntra], pair(K::kP2), C::kPairLd, tile(K::kRUp) + j0, C::kLd);
  multiply_add<16, true>(acc[K::kDkIntra], pair(K::kQ2), C::kPairLd, tile(K::kAUpBefore) + j0,
                         C::kLd);
  multiply_add<16, true>(acc[K::kDbIntra], pair(K::kP1), C::kPairLd, tile(K::kRUp) + j0, C::kLd);
  multiply_add<16, true>(acc[K::kDbIntra], pair(K::kQ1), C::kPairLd, tile(K::kAUpBefore) + j0,
                         C::kLd);
#pragma unroll
  for (int p = 0; p < K::kProducts; ++p)
    wmma::store_matrix_sync(product(p), acc[p], 16, wmma::mem_row_major);
  __syncwarp();
  if (lane >= 16) return;

  auto at = [&](int which, int t) { return product(which)[t * 16 + key]; };
  const float lam_end = lambda[(kChunk - 1) * C::kLd + j];
  for (int t = 0; t < kChunk; ++t)
    state_dot += tile(K::kBDown)[t * C::kLd + j] * at(K::kSaG, t) +
                 tile(K::kKDown)[t * C::kLd + j] * at(K::kVG, t);
  float E = expf(lam_end) * state_dot;  // E_L without the last step's own output
  // r, b, k, a come back from their scaled tiles (a few ulps), not from global memory: this
  // loop is sequential in t, and a global load per step would stall it each time.
#pragma unroll
  for (int t = kChunk - 1; t >= 0; --t) {
    if (t >= steps) continue;
    const int64_t o = head.at(t0 + t) + j;
    const float lam = lambda[t * C::kLd + j],
                lam_before = t > 0 ? lambda[(t - 1) * C::kLd + j] : 0.0f;
    const float up = expf(lam), down = expf(-lam), up_before = expf(lam_before);
    const float dr_t = up * at(K::kDr, t), da_t = up_before * at(K::kDa, t);
    const float dk_t = expf(lam_end - lam) * at(K::kVG, t) + down * at(K::kDkIntra, t);
    const float db_t = expf(lam_end - lam) * at(K::kSaG, t) + down * at(K::kDbIntra, t);
    const float r_t = tile(K::kRUp)[t * C::kLd + j] * down,
                b_t = tile(K::kBDown)[t * C::kLd + j] * up,
                k_t = tile(K::kKDown)[t * C::kLd + j] * up,
                a_t = tile(K::kAUpBefore)[t * C::kLd + j] / up_before;
    E = fmaf(r_t, dr_t, E);
    const float dlog = E - b_t * db_t - k_t * dk_t;
    const float sig = sigmoid(z_own[t]);
    store(dr, o, dr_t);
    store(dz, o, dlog * (-kDecayScale * sig * (1.0f - sig)));  // log d = -c sigmoid(z)
    store(dk, o, dk_t);
    store(da, o, da_t);
    store(db, o, db_t);
    E = fmaf(a_t, da_t, dlog);
  }
}

template <class T>
Inputs<T> inputs(const void* r, const void* z, const void* k, const void* v, const void* a,
                 const void* b) {
  return {static_cast<const T*>(r), static_cast<const T*>(z), static_cast<const T*>(k),
          static_cast<const T*>(v), static_cast<const T*>(a), static_cast<const T*>(b)};
}

int multiprocessors(Place place) {
  int sms = 0;
  return cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, place.device) == cudaSuccess
             ? sms
             : 0;
}

// Whether even twice the (batch, head) pairs fit on the SMs one block each: the passes over time
// then leave SMs idle.
bool few_heads(Place place, const Wkv7Shape& s) {
  const int sms = multiprocessors(place);
  return sms > 0 && 2 * s.B * s.H <= sms;
}

// Blocks per (batch, head) of the passes over time: two with few heads (from N = 64; smaller
// heads have too few rows to split). Measured on an H200: B*H = 12 and 32 gain, 96 and 128 (which
// would then share SMs) lose.
template <int N>
int row_blocks(Place place, const Wkv7Shape& s) {
  return N >= 64 && few_heads(place, s) ? 2 : 1;
}

// Calls run(integral_constant<int, Blocks>) for the row split chosen for this shape.
template <int N, class Run>
std::string with_row_blocks(Place place, const Wkv7Shape& s, const Run& run) {
  if constexpr (N >= 64) {
    if (row_blocks<N>(place, s) == 2) return run(std::integral_constant<int, 2>{});
  }
  return run(std::integral_constant<int, 1>{});
}

std::atomic<Wkv7ChunkedForm> chunked_form{Wkv7ChunkedForm::kByShape};

// Whether the fused form runs. By shape: at N = 64 with at least three (batch, head) blocks per
// SM. Each fused block works through its chunks one after the other, building a chunk (about
// 6.5 us alone on an H200) and then passing it, so it only wins where many blocks share an SM
// and hide each other's latency. Measured on an H200 (bench/RESULTS.md, 2026-12-03 21:33 UTC),
// forward + backward: B*H = 512 fused 19.1 ms vs 21.2 (T = 4096), 4.87 vs 5.41 (T = 1024);
// B*H = 256 11.2 vs 10.9, 2.87 vs 2.80; B*H = 96 1.94 vs 1.25.
bool fused_for(Place place, const Wkv7Shape& s) {
  switch (chunked_form.load()) {
    case Wkv7ChunkedForm::kTwoKernels:
      return false;
    case Wkv7ChunkedForm::kFused:
      return true;
    case Wkv7ChunkedForm::kByShape:
      break;
  }
  const int sms = multiprocessors(place);
  return s.N == 64 && sms > 0 && s.B * s.H >= 3 * int64_t{sms};
}

// One chunked recurrence (see ChunkOperands): the chunk-parallel kernel, then the pass over
// chunks, or both in one kernel. `operands` holds chunk_operand_floats(N) per chunk (the two
// kernels' form only).
template <int N, Pass kPass>
std::string chunked_pass(Place place, const Wkv7Shape& s, const Inputs<__nv_bfloat16>& in,
                         const __nv_bfloat16* values, const float* entry, __nv_bfloat16* out_values,
                         float* exit, float* chunk_entries, float* x_sa, float* operands) {
  const char* what = kPass == Pass::kForward ? "wkv7_forward" : "wkv7_backward state gradient";
  const auto heads = static_cast<unsigned>(s.B * s.H);
  if (fused_for(place, s)) {
    constexpr size_t bytes = FusedChunks<N>::shared_bytes();
    if (!allow_shared(fused_chunk_pass_kernel<N, kPass>, bytes))
      return status("wkv7 fused chunked pass shared memory");
    fused_chunk_pass_kernel<N, kPass><<<heads, FusedChunks<N>::kThreads, bytes, stream_of(place)>>>(
        s, in, values, entry, out_values, exit, chunk_entries, x_sa);
    return status(what);
  }
  // The scratch was sized for the form chosen then (a form forced in between would find none).
  if (!operands) return "wkv7: the two-kernel chunked form was given no scratch";
  constexpr size_t prepare_bytes = PrepareChunk<N>::shared_bytes(),
                   pass_bytes = ChunkPass<N, kPass>::shared_bytes();
  if (!allow_shared(prepare_kernel<N, kPass>, prepare_bytes) ||
      !allow_shared(chunk_pass_kernel<N, kPass>, pass_bytes))
    return status("wkv7 chunked pass shared memory");
  prepare_kernel<N, kPass>
      <<<static_cast<unsigned>(s.B * s.H * wkv7_chunks(s)), ChunkTiles<N>::kThreads, prepare_bytes,
         stream_of(place)>>>(s, in, values, operands);
  chunk_pass_kernel<N, kPass>
      <<<heads, ChunkPass<N, kPass>::kThreads, pass_bytes, stream_of(place)>>>(
          s, values, entry, operands, out_values, exit, chunk_entries, x_sa);
  return status(what);
}

template <class T, int N>
std::string forward_n(Place place, const Wkv7Shape& s, const Inputs<T>& in, const float* s0,
                      void* y, float* s_final, float* chunk_states, float* sa, float* scratch) {
  // bf16: the chunked path. Measured on an H200 against the pass over time (forward, then
  // forward + backward, N = 64): B,T,H = 8,1024,12 0.32 / 1.44 ms vs 0.45 / 1.59; 1,16384,32
  // 3.18 / 13.8 vs 6.13 / 16.6; 8,1024,32 0.68 / 2.95 vs 0.63 / 2.98.
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return chunked_pass<N, Pass::kForward>(place, s, in, in.v, s0, static_cast<T*>(y), s_final,
                                           chunk_states, sa, scratch);
  } else {
    constexpr size_t bytes = forward_shared_bytes<N>();
    return with_row_blocks<N>(place, s, [&](auto blocks) {
      constexpr int Blocks = decltype(blocks)::value;
      if (!allow_shared(forward_kernel<N, Blocks>, bytes))
        return status("wkv7_forward shared memory");
      forward_kernel<N, Blocks>
          <<<static_cast<unsigned>(s.B * s.H * Blocks), RowSplit<N, Blocks>::kThreads, bytes,
             stream_of(place)>>>(s, in, s0, static_cast<float*>(y), s_final, chunk_states, sa);
      return status("wkv7_forward");
    });
  }
}

template <class T, int N>
std::string backward_n(Place place, const Wkv7Shape& s, const Inputs<T>& in,
                       const float* chunk_states, const float* sa, const T* dy,
                       const float* ds_final, T* dr, T* dz, T* dk, T* dv, T* da, T* db, float* ds0,
                       float* scratch) {
  float* chunk_grads = scratch;
  float* dsa = scratch + wkv7_chunk_state_floats(s);
  // bf16: the chunked state gradient (split TF32). Measured on an H200 against the fp32 pass over
  // time: see bench/RESULTS.md, 2026-12-03.
  std::string state_pass;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    state_pass = chunked_pass<N, Pass::kStateGradient>(
        place, s, in, dy, ds_final, dv, ds0, chunk_grads, dsa, dsa + s.B * s.T * s.H * s.N);
  } else {
    constexpr size_t state_bytes = state_grad_shared_bytes<N>();
    state_pass = with_row_blocks<N>(place, s, [&](auto blocks) {
      constexpr int Blocks = decltype(blocks)::value;
      if (!allow_shared(state_grad_kernel<N, Blocks>, state_bytes))
        return status("wkv7_backward shared memory");
      state_grad_kernel<N, Blocks>
          <<<static_cast<unsigned>(s.B * s.H * Blocks), RowSplit<N, Blocks>::kThreads, state_bytes,
             stream_of(place)>>>(s, in, dy, ds_final, ds0, chunk_grads, dsa, dv);
      return status("wkv7_backward state gradient");
    });
  }
  if (!state_pass.empty()) return state_pass;
  constexpr size_t chunk_bytes = chunk_shared_bytes<N>();
  const auto blocks = static_cast<unsigned>(s.B * s.H * wkv7_chunks(s));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    constexpr size_t bytes = GradientChunk<N>::shared_bytes();
    if (!allow_shared(chunk_grad_tensor_core_kernel<N>, bytes))
      return status("wkv7_backward shared memory");
    chunk_grad_tensor_core_kernel<N><<<blocks, ChunkTiles<N>::kThreads, bytes, stream_of(place)>>>(
        s, in, dy, sa, dsa, chunk_states, chunk_grads, dr, dz, dk, da, db);
  } else {
    if (!allow_shared(chunk_grad_kernel<N>, chunk_bytes))
      return status("wkv7_backward shared memory");
    chunk_grad_kernel<N><<<blocks, ColumnSplit<N>::kThreads, chunk_bytes, stream_of(place)>>>(
        s, in, dy, sa, dsa, chunk_states, chunk_grads, dr, dz, dk, da, db);
  }
  return status("wkv7_backward chunk gradients");
}

template <class Run>
std::string dispatch_n(int64_t n, const Run& run) {
  switch (n) {
    case 16:
      return run(std::integral_constant<int, 16>{});
    case 32:
      return run(std::integral_constant<int, 32>{});
    case 64:
      return run(std::integral_constant<int, 64>{});
    case 128:
      return run(std::integral_constant<int, 128>{});
  }
  return "wkv7: unsupported head size " + std::to_string(n);
}

}  // namespace

void select_wkv7_chunked_form(Wkv7ChunkedForm form) { chunked_form = form; }

bool wkv7_supports(int64_t n) { return n == 16 || n == 32 || n == 64 || n == 128; }

int64_t wkv7_forward_scratch_floats(Place place, InputType type, const Wkv7Shape& s) {
  if (type != InputType::kBFloat16 || fused_for(place, s)) return 0;
  return s.B * s.H * wkv7_chunks(s) * chunk_operand_floats(s.N);
}

int64_t wkv7_backward_scratch_floats(Place place, InputType type, const Wkv7Shape& s) {
  return wkv7_chunk_state_floats(s) + s.B * s.T * s.H * s.N +
         wkv7_forward_scratch_floats(place, type, s);
}

std::string wkv7_forward(Place place, InputType type, const Wkv7Shape& s, const void* r,
                         const void* z, const void* k, const void* v, const void* a, const void* b,
                         const float* s0, void* y, float* s_final, float* chunk_states, float* sa,
                         float* scratch) {
  if (s.B * s.H == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  auto typed = [&](auto tag) {
    using T = decltype(tag);
    const Inputs<T> in = inputs<T>(r, z, k, v, a, b);
    return dispatch_n(s.N, [&](auto n) {
      return forward_n<T, decltype(n)::value>(place, s, in, s0, y, s_final, chunk_states, sa,
                                              scratch);
    });
  };
  return type == InputType::kBFloat16 ? typed(__nv_bfloat16{}) : typed(float{});
}

std::string wkv7_backward(Place place, InputType type, const Wkv7Shape& s, const void* r,
                          const void* z, const void* k, const void* v, const void* a, const void* b,
                          const float* chunk_states, const float* sa, const void* dy,
                          const float* ds_final, void* dr, void* dz, void* dk, void* dv, void* da,
                          void* db, float* ds0, float* scratch) {
  if (s.B * s.H == 0) return {};
  if (cudaSetDevice(place.device) != cudaSuccess) return status("cudaSetDevice");
  auto typed = [&](auto tag) {
    using T = decltype(tag);
    const Inputs<T> in = inputs<T>(r, z, k, v, a, b);
    return dispatch_n(s.N, [&](auto n) {
      auto out = [](void* p) { return static_cast<T*>(p); };
      return backward_n<T, decltype(n)::value>(
          place, s, in, chunk_states, sa, static_cast<const T*>(dy), ds_final, out(dr), out(dz),
          out(dk), out(dv), out(da), out(db), ds0, scratch);
    });
  };
  return type == InputType::kBFloat16 ? typed(__nv_bfloat16{}) : typed(float{});
}

}  // namespace peftkit::kernels::cuda
