#include "wkv7/wkv7_cuda.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace peftkit::kernels::cuda {
namespace {

constexpr float kDecayScale = 0.60653065971263342f;  // e^-0.5

template <class T>
__device__ inline float load(const T* p, int64_t i);
template <>
__device__ inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ inline float load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

template <class T>
__device__ inline void store(T* p, int64_t i, float v);
template <>
__device__ inline void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
__device__ inline void store<__nv_bfloat16>(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ inline float decay_of(float z) { return __expf(-kDecayScale / (1.0f + __expf(-z))); }

// Element i of the six step vectors of one time step. Fetched into registers one step ahead, so
// the global loads of step t + 1 overlap the arithmetic of step t.
struct StepValues {
  float r, z, k, v, a, b;
};

template <class T>
__device__ inline StepValues fetch(const T* r, const T* z, const T* k, const T* v, const T* a, const T* b, int64_t o) {
  return {load(r, o), load(z, o), load(k, o), load(v, o), load(a, o), load(b, o)};
}

// Makes thread i's values visible to the block (the caller synchronises around it).
__device__ inline void publish(const StepValues& x, int i, float* sr, float* sd, float* sk, float* sv, float* sa_,
                               float* sb, float* sz) {
  sr[i] = x.r;
  if (sz) sz[i] = x.z;
  sd[i] = decay_of(x.z);
  sk[i] = x.k;
  sv[i] = x.v;
  sa_[i] = x.a;
  sb[i] = x.b;
}

// One step of row i: S_i <- S_i diag(d) + (S_i . a) b^T + v_i k^T; returns S_i . r.
template <int N>
__device__ inline float step_row(float* S, int i, const float* sr, const float* sd, const float* sk, const float* sv,
                                 const float* sa_, const float* sb) {
  float sa = 0;
#pragma unroll
  for (int j = 0; j < N; ++j) sa += S[j] * sa_[j];
  const float vi = sv[i];
  float y = 0;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    S[j] = S[j] * sd[j] + sa * sb[j] + vi * sk[j];
    y += S[j] * sr[j];
  }
  return y;
}

template <class T, int N>
__global__ void __launch_bounds__(N) forward_kernel(Wkv7Shape s, const T* r, const T* z, const T* k, const T* v,
                                                    const T* a, const T* b, const float* s0, T* y, float* s_final,
                                                    float* checkpoints) {
  const int bh = blockIdx.x, i = threadIdx.x;
  const int64_t bi = bh / s.H, h = bh % s.H, HN = s.H * N, chunks = (s.T + kWkv7Chunk - 1) / kWkv7Chunk;
  __shared__ float sr[N], sd[N], sk[N], sv[N], sa_[N], sb[N];
  float S[N];
#pragma unroll
  for (int j = 0; j < N; ++j) S[j] = s0[(static_cast<int64_t>(bh) * N + i) * N + j];
  auto offset = [&](int64_t t) { return bi * s.T * HN + t * HN + h * N + i; };
  StepValues next = fetch(r, z, k, v, a, b, offset(0));
  for (int64_t t = 0; t < s.T; ++t) {
    if (t % kWkv7Chunk == 0) {
      float* c = checkpoints + ((static_cast<int64_t>(bh) * chunks + t / kWkv7Chunk) * N + i) * N;
#pragma unroll
      for (int j = 0; j < N; ++j) c[j] = S[j];
    }
    __syncthreads();
    publish(next, i, sr, sd, sk, sv, sa_, sb, nullptr);
    __syncthreads();
    if (t + 1 < s.T) next = fetch(r, z, k, v, a, b, offset(t + 1));
    store(y, offset(t), step_row<N>(S, i, sr, sd, sk, sv, sa_, sb));
  }
#pragma unroll
  for (int j = 0; j < N; ++j) s_final[(static_cast<int64_t>(bh) * N + i) * N + j] = S[j];
}

// Shared memory of the backward: dS, the state after the step (cur) and before it (prev), each
// [N][N + 1] (padded against bank conflicts), and the per-step vectors.
template <int N>
constexpr size_t backward_shared_bytes() {
  return sizeof(float) * (3 * N * (N + 1) + 12 * N);
}

template <class T, int N>
__global__ void __launch_bounds__(N) backward_kernel(Wkv7Shape s, const T* r, const T* z, const T* k, const T* v,
                                                     const T* a, const T* b, const float* checkpoints, const float* dy,
                                                     const float* ds_final, float* dr, float* dz, float* dk,
                                                     float* dv, float* da, float* db, float* ds0, float* scratch) {
  constexpr int P = N + 1;
  extern __shared__ float shared[];
  float* dS = shared;
  float* cur = dS + N * P;
  float* prev = cur + N * P;
  float *sr = prev + N * P, *sd = sr + N, *sk = sd + N, *sv = sk + N, *sa_ = sv + N, *sb = sa_ + N, *sz = sb + N,
        *sdy = sz + N, *ssa = sdy + N, *sdsa = ssa + N;
  const int bh = blockIdx.x, i = threadIdx.x;
  const int64_t bi = bh / s.H, h = bh % s.H, HN = s.H * N, NN = N * N, chunks = (s.T + kWkv7Chunk - 1) / kWkv7Chunk;
  float* states = scratch + static_cast<int64_t>(bh) * (kWkv7Chunk + 1) * NN;  // [t][j][i]: coalesced rows
  auto offset = [&](int64_t t) { return bi * s.T * HN + t * HN + h * N + i; };
#pragma unroll
  for (int j = 0; j < N; ++j) dS[i * P + j] = ds_final ? ds_final[static_cast<int64_t>(bh) * NN + i * N + j] : 0.0f;
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kWkv7Chunk, t1 = min(s.T, t0 + kWkv7Chunk);
    // Recompute the chunk's states S_{t0} .. S_{t1}; thread i keeps row i.
    float S[N];
    const float* checkpoint = checkpoints + ((static_cast<int64_t>(bh) * chunks + c) * N + i) * N;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      S[j] = checkpoint[j];
      states[j * N + i] = S[j];
    }
    StepValues next = fetch(r, z, k, v, a, b, offset(t0));
    for (int64_t t = t0; t < t1; ++t) {
      __syncthreads();
      publish(next, i, sr, sd, sk, sv, sa_, sb, nullptr);
      __syncthreads();
      if (t + 1 < t1) next = fetch(r, z, k, v, a, b, offset(t + 1));
      step_row<N>(S, i, sr, sd, sk, sv, sa_, sb);
      float* after = states + (t - t0 + 1) * NN;
#pragma unroll
      for (int j = 0; j < N; ++j) after[j * N + i] = S[j];
    }
    __syncthreads();
    // cur = S_{t1}
    for (int j = 0; j < N; ++j) cur[j * P + i] = states[(t1 - t0) * NN + j * N + i];  // cur[j][i] = S[i][j]
    next = fetch(r, z, k, v, a, b, offset(t1 - 1));
    float next_dy = dy ? dy[offset(t1 - 1)] : 0.0f;
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t o = offset(t) - i;
      // prev = S_{t-1} (stored transposed like cur: prev[j * P + i] = S[i][j]).
      for (int j = 0; j < N; ++j) prev[j * P + i] = states[(t - t0) * NN + j * N + i];
      publish(next, i, sr, sd, sk, sv, sa_, sb, sz);
      sdy[i] = next_dy;
      __syncthreads();
      if (t > t0) {
        next = fetch(r, z, k, v, a, b, offset(t - 1));
        next_dy = dy ? dy[offset(t - 1)] : 0.0f;
      }
      // Row i: dS += dy r^T; sa_i = S_{t-1,i} . a; dv_i; dsa_i.
      float sa = 0, dvi = 0, dsai = 0;
      const float dyi = sdy[i];
      for (int j = 0; j < N; ++j) {
        const float g = dS[i * P + j] + dyi * sr[j];
        dS[i * P + j] = g;
        sa += prev[j * P + i] * sa_[j];
        dvi += g * sk[j];
        dsai += g * sb[j];
      }
      ssa[i] = sa;
      sdsa[i] = dsai;
      dv[o + i] = dvi;
      __syncthreads();
      // Column i (as j): dr, dk, db, dd, da.
      float dri = 0, dki = 0, dbi = 0, ddi = 0, dai = 0;
      for (int row = 0; row < N; ++row) {
        const float g = dS[row * P + i];
        const float p = prev[i * P + row];  // S_{t-1}[row][i]
        dri += cur[i * P + row] * sdy[row];
        dki += g * sv[row];
        dbi += g * ssa[row];
        ddi += g * p;
        dai += sdsa[row] * p;
      }
      dr[o + i] = dri;
      dk[o + i] = dki;
      db[o + i] = dbi;
      da[o + i] = dai;
      const float sig = 1.0f / (1.0f + __expf(-sz[i]));
      dz[o + i] = ddi * (-kDecayScale * sd[i] * sig * (1.0f - sig));
      __syncthreads();
      // dS <- dS diag(d) + dsa a^T (row i); then prev becomes cur.
      for (int j = 0; j < N; ++j) {
        dS[i * P + j] = dS[i * P + j] * sd[j] + sdsa[i] * sa_[j];
        cur[j * P + i] = prev[j * P + i];
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int j = 0; j < N; ++j) ds0[static_cast<int64_t>(bh) * NN + i * N + j] = dS[i * P + j];
}

std::string status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

template <class T, int N>
std::string forward_n(const Wkv7Shape& s, const void* r, const void* z, const void* k, const void* v, const void* a,
                      const void* b, const float* s0, void* y, float* s_final, float* checkpoints) {
  forward_kernel<T, N><<<static_cast<unsigned>(s.B * s.H), N>>>(
      s, static_cast<const T*>(r), static_cast<const T*>(z), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<const T*>(a), static_cast<const T*>(b), s0, static_cast<T*>(y), s_final, checkpoints);
  return status("wkv7_forward");
}

template <class T, int N>
std::string backward_n(const Wkv7Shape& s, const void* r, const void* z, const void* k, const void* v, const void* a,
                       const void* b, const float* checkpoints, const float* dy, const float* ds_final, float* dr,
                       float* dz, float* dk, float* dv, float* da, float* db, float* ds0, float* scratch) {
  constexpr size_t bytes = backward_shared_bytes<N>();
  if (cudaFuncSetAttribute(backward_kernel<T, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) !=
      cudaSuccess)
    return status("wkv7_backward shared memory");
  backward_kernel<T, N><<<static_cast<unsigned>(s.B * s.H), N, bytes>>>(
      s, static_cast<const T*>(r), static_cast<const T*>(z), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<const T*>(a), static_cast<const T*>(b), checkpoints, dy, ds_final, dr, dz, dk, dv, da, db, ds0,
      scratch);
  return status("wkv7_backward");
}

template <class T>
std::string forward_typed(const Wkv7Shape& s, const void* r, const void* z, const void* k, const void* v,
                          const void* a, const void* b, const float* s0, void* y, float* s_final, float* checkpoints) {
  switch (s.N) {
    case 16: return forward_n<T, 16>(s, r, z, k, v, a, b, s0, y, s_final, checkpoints);
    case 32: return forward_n<T, 32>(s, r, z, k, v, a, b, s0, y, s_final, checkpoints);
    case 64: return forward_n<T, 64>(s, r, z, k, v, a, b, s0, y, s_final, checkpoints);
    case 128: return forward_n<T, 128>(s, r, z, k, v, a, b, s0, y, s_final, checkpoints);
  }
  return "wkv7_forward: unsupported head size";
}

template <class T>
std::string backward_typed(const Wkv7Shape& s, const void* r, const void* z, const void* k, const void* v,
                           const void* a, const void* b, const float* checkpoints, const float* dy,
                           const float* ds_final, float* dr, float* dz, float* dk, float* dv, float* da, float* db,
                           float* ds0, float* scratch) {
  switch (s.N) {
    case 16: return backward_n<T, 16>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db, ds0, scratch);
    case 32: return backward_n<T, 32>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db, ds0, scratch);
    case 64: return backward_n<T, 64>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db, ds0, scratch);
    case 128: return backward_n<T, 128>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db, ds0, scratch);
  }
  return "wkv7_backward: unsupported head size";
}

}  // namespace

bool wkv7_supports(int64_t n) { return n == 16 || n == 32 || n == 64 || n == 128; }

std::string wkv7_forward(int device, InputType type, const Wkv7Shape& s, const void* r, const void* z, const void* k,
                         const void* v, const void* a, const void* b, const float* s0, void* y, float* s_final,
                         float* checkpoints) {
  if (s.B * s.H == 0) return {};
  if (cudaSetDevice(device) != cudaSuccess) return status("cudaSetDevice");
  return type == InputType::kBFloat16
             ? forward_typed<__nv_bfloat16>(s, r, z, k, v, a, b, s0, y, s_final, checkpoints)
             : forward_typed<float>(s, r, z, k, v, a, b, s0, y, s_final, checkpoints);
}

std::string wkv7_backward(int device, InputType type, const Wkv7Shape& s, const void* r, const void* z, const void* k,
                          const void* v, const void* a, const void* b, const float* checkpoints, const float* dy,
                          const float* ds_final, float* dr, float* dz, float* dk, float* dv, float* da, float* db,
                          float* ds0, float* scratch) {
  if (s.B * s.H == 0) return {};
  if (cudaSetDevice(device) != cudaSuccess) return status("cudaSetDevice");
  return type == InputType::kBFloat16
             ? backward_typed<__nv_bfloat16>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db,
                                             ds0, scratch)
             : backward_typed<float>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db, ds0,
                                     scratch);
}

}  // namespace peftkit::kernels::cuda
