// WKV6 on the CPU (the exact recurrence, the CPU path of training and the oracle for GPU kernels)
// and its autograd binding, which runs the CUDA kernel (wkv6_cuda.cu) for CUDA tensors. The CPU
// backward recomputes states from checkpoints taken every kChunk steps, so memory is
// B*H*(T/kChunk)*N*N instead of B*H*T*N*N.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "binding.hpp"
#include "wkv6/wkv6.hpp"
#ifdef PEFTKIT_WKV6_CUDA
#include "cuda_place_of.hpp"
#include "wkv6/wkv6_cuda.hpp"
#endif

namespace peftkit::kernels {
namespace {

using binding::accumulate_type;
using binding::output;

constexpr int64_t kChunk = 16;

struct Shape {
  int64_t B, T, H, N;
};

// One step for one (b, h): y = S r + v (u k . r) when y is not null, then S <- S diag(d) + v k^T.
template <class Acc>
void step(Acc* S, int64_t N, const Acc* r, const Acc* k, const Acc* v, const Acc* w, const Acc* u,
          Acc* y, Acc* d_scratch) {
  Acc bonus = 0;
  for (int64_t j = 0; j < N; ++j) {
    d_scratch[j] = std::exp(-std::exp(w[j]));
    bonus += r[j] * u[j] * k[j];
  }
  for (int64_t i = 0; i < N; ++i) {
    Acc* row = S + i * N;
    Acc out = 0;
    for (int64_t j = 0; j < N; ++j) {
      out += row[j] * r[j];
      row[j] = row[j] * d_scratch[j] + v[i] * k[j];
    }
    if (y) y[i] = out + v[i] * bonus;
  }
}

template <class Acc>
void forward_kernel(const Shape& s, const at::Tensor& r, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& w, const at::Tensor& u, const at::Tensor& s0, at::Tensor& y,
                    at::Tensor& s_final, at::Tensor& checkpoints) {
  const int64_t N = s.N, HN = s.H * s.N, chunks = (s.T + kChunk - 1) / kChunk;
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> d(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / s.H, h = bh % s.H;
      const int64_t base = bi * s.T * HN + h * N;
      const Acc* uh = u.data_ptr<Acc>() + h * N;
      Acc* S = s_final.data_ptr<Acc>() + bh * N * N;
      std::copy_n(s0.data_ptr<Acc>() + bh * N * N, N * N, S);
      for (int64_t t = 0; t < s.T; ++t) {
        if (t % kChunk == 0)
          std::copy_n(S, N * N, checkpoints.data_ptr<Acc>() + (bh * chunks + t / kChunk) * N * N);
        const int64_t o = base + t * HN;
        step<Acc>(S, N, r.data_ptr<Acc>() + o, k.data_ptr<Acc>() + o, v.data_ptr<Acc>() + o,
                  w.data_ptr<Acc>() + o, uh, y.data_ptr<Acc>() + o, d.data());
      }
    }
  });
}

// du is [B, H, N]: each (b, h) writes its own row, summed over the batch by the caller.
template <class Acc>
void backward_kernel(const Shape& s, const at::Tensor& r, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& w, const at::Tensor& u, const at::Tensor& checkpoints,
                     const at::Tensor& dy, const at::Tensor& ds_final, at::Tensor& dr,
                     at::Tensor& dk, at::Tensor& dv, at::Tensor& dw, at::Tensor& du,
                     at::Tensor& ds0) {
  const int64_t N = s.N, NN = N * N, HN = s.H * s.N, chunks = (s.T + kChunk - 1) / kChunk;
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> states((kChunk + 1) * NN), dS(NN), d(N), e(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / s.H, h = bh % s.H;
      const int64_t base = bi * s.T * HN + h * N;
      const Acc* uh = u.data_ptr<Acc>() + h * N;
      Acc* duh = du.data_ptr<Acc>() + bh * N;
      std::fill_n(duh, N, Acc(0));
      if (ds_final.defined())
        std::copy_n(ds_final.data_ptr<Acc>() + bh * NN, NN, dS.data());
      else
        std::fill(dS.begin(), dS.end(), Acc(0));
      for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kChunk, t1 = std::min(s.T, t0 + kChunk);
        // Recompute the states before each step of this chunk from its checkpoint.
        std::copy_n(checkpoints.data_ptr<Acc>() + (bh * chunks + c) * NN, NN, states.data());
        for (int64_t t = t0; t + 1 < t1; ++t) {
          Acc* next = states.data() + (t - t0 + 1) * NN;
          std::copy_n(states.data() + (t - t0) * NN, NN, next);
          const int64_t o = base + t * HN;
          step<Acc>(next, N, r.data_ptr<Acc>() + o, k.data_ptr<Acc>() + o, v.data_ptr<Acc>() + o,
                    w.data_ptr<Acc>() + o, uh, nullptr, d.data());
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t o = base + t * HN;
          const Acc *rt = r.data_ptr<Acc>() + o, *kt = k.data_ptr<Acc>() + o,
                    *vt = v.data_ptr<Acc>() + o, *wt = w.data_ptr<Acc>() + o;
          const Acc* dyt = dy.defined() ? dy.data_ptr<Acc>() + o : nullptr;
          const Acc* prev = states.data() + (t - t0) * NN;  // S_{t-1}
          Acc *drt = dr.data_ptr<Acc>() + o, *dkt = dk.data_ptr<Acc>() + o,
              *dvt = dv.data_ptr<Acc>() + o, *dwt = dw.data_ptr<Acc>() + o;
          for (int64_t j = 0; j < N; ++j) {
            e[j] = std::exp(wt[j]);
            d[j] = std::exp(-e[j]);
            drt[j] = dkt[j] = dwt[j] = 0;
          }
          // S_t = S_{t-1} diag(d) + v k^T, with dS = dL/dS_t.
          for (int64_t i = 0; i < N; ++i) {
            Acc dvi = 0;
            for (int64_t j = 0; j < N; ++j) {
              const Acc g = dS[i * N + j];
              dvi += g * kt[j];
              dkt[j] += g * vt[i];
              dwt[j] += g * prev[i * N + j];  // dL/dd_j for now
            }
            dvt[i] = dvi;
          }
          for (int64_t i = 0; i < N; ++i)
            for (int64_t j = 0; j < N; ++j) dS[i * N + j] *= d[j];
          // y = S_{t-1} r + v (u k . r).
          if (dyt) {
            Acc dy_v = 0, bonus = 0;
            for (int64_t i = 0; i < N; ++i) dy_v += dyt[i] * vt[i];
            for (int64_t j = 0; j < N; ++j) bonus += rt[j] * uh[j] * kt[j];
            for (int64_t i = 0; i < N; ++i) {
              dvt[i] += dyt[i] * bonus;
              for (int64_t j = 0; j < N; ++j) {
                drt[j] += prev[i * N + j] * dyt[i];
                dS[i * N + j] += dyt[i] * rt[j];
              }
            }
            for (int64_t j = 0; j < N; ++j) {
              drt[j] += uh[j] * kt[j] * dy_v;
              dkt[j] += rt[j] * uh[j] * dy_v;
              duh[j] += rt[j] * kt[j] * dy_v;
            }
          }
          // d = exp(-e), e = exp(w): dd/dw = -d e.
          for (int64_t j = 0; j < N; ++j) dwt[j] *= -d[j] * e[j];
        }
      }
      std::copy_n(dS.data(), NN, ds0.data_ptr<Acc>() + bh * NN);
    }
  });
}

#ifdef PEFTKIT_WKV6_CUDA
void check_cuda(const std::string& status) {
  TORCH_CHECK(status.empty(), "wkv6 CUDA kernel: ", status);
}

struct CudaForward {
  at::Tensor r, k, v, w, u;  // as the kernel read them
  at::Tensor y, s_final;     // y in the kernel's input dtype
  at::Tensor chunk_states;   // the state entering every chunk
};

CudaForward cuda_forward(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& w, const at::Tensor& u, const at::Tensor& s0) {
  auto prepare = [&](const at::Tensor& x) {
    return x.to(binding::cuda_input_type(r)).contiguous();
  };
  const cuda::Wkv6Shape shape{r.size(0), r.size(1), r.size(2), r.size(3)};
  CudaForward f{prepare(r), prepare(k), prepare(v), prepare(w), u.to(at::kFloat).contiguous(),
                {},         {},         {}};
  const auto f32 = f.r.options().dtype(at::kFloat);
  const at::Tensor initial = s0.defined() ? s0.to(at::kFloat).contiguous()
                                          : at::zeros({shape.B, shape.H, shape.N, shape.N}, f32);
  f.y = output(f.r.sizes(), f.r.options());
  f.s_final = output({shape.B, shape.H, shape.N, shape.N}, f32);
  f.chunk_states = output({shape.B * shape.H, cuda::wkv6_chunks(shape), shape.N, shape.N}, f32);
  check_cuda(cuda::wkv6_forward(cuda::place_of(r), binding::cuda_type(f.r), shape, f.r.data_ptr(),
                                f.k.data_ptr(), f.v.data_ptr(), f.w.data_ptr(),
                                f.u.data_ptr<float>(), initial.data_ptr<float>(), f.y.data_ptr(),
                                f.s_final.data_ptr<float>(), f.chunk_states.data_ptr<float>()));
  return f;
}

// dL/d(r, k, v, w, u, s0) in fp32 from the saved forward.
std::vector<at::Tensor> cuda_backward(const std::vector<at::Tensor>& saved, const at::Tensor& dy_in,
                                      const at::Tensor& ds_final_in) {
  const at::Tensor &r = saved[0], &k = saved[1], &v = saved[2], &w = saved[3], &u = saved[4],
                   &chunk_states = saved[5];
  const cuda::Wkv6Shape shape{r.size(0), r.size(1), r.size(2), r.size(3)};
  const std::vector<int64_t> state_sizes{shape.B, shape.H, shape.N, shape.N};
  const auto f32 = r.options().dtype(at::kFloat);
  // No gradient is a zero one (the kernels read both).
  const at::Tensor dy =
      dy_in.defined() ? dy_in.to(at::kFloat).contiguous() : at::zeros(r.sizes(), f32);
  const at::Tensor ds_final =
      ds_final_in.defined() ? ds_final_in.to(at::kFloat).contiguous() : at::zeros(state_sizes, f32);
  at::Tensor dr = output(r.sizes(), f32), dk = output(r.sizes(), f32), dv = output(r.sizes(), f32),
             dw = output(r.sizes(), f32);
  at::Tensor du = output({shape.B, shape.H, cuda::wkv6_chunks(shape), shape.N}, f32);
  at::Tensor ds0 = output(state_sizes, f32);
  at::Tensor chunk_grads = at::empty_like(chunk_states);
  check_cuda(cuda::wkv6_backward(
      cuda::place_of(r), binding::cuda_type(r), shape, r.data_ptr(), k.data_ptr(), v.data_ptr(),
      w.data_ptr(), u.data_ptr<float>(), chunk_states.data_ptr<float>(), dy.data_ptr<float>(),
      ds_final.data_ptr<float>(), dr.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>(),
      dw.data_ptr<float>(), du.data_ptr<float>(), ds0.data_ptr<float>(),
      chunk_grads.data_ptr<float>()));
  return {dr, dk, dv, dw, du.sum(at::IntArrayRef{0, 2}), ds0};
}
#endif

class Wkv6Function : public torch::autograd::Function<Wkv6Function> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor r,
                                                at::Tensor k, at::Tensor v, at::Tensor w,
                                                at::Tensor u, at::Tensor s0) {
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(r.scalar_type());
    ctx->saved_data["u_dtype"] = static_cast<int64_t>(u.scalar_type());
    ctx->saved_data["s0_dtype"] = static_cast<int64_t>(s0.scalar_type());
#ifdef PEFTKIT_WKV6_CUDA
    if (r.is_cuda()) {
      CudaForward f = cuda_forward(r, k, v, w, u, s0);
      ctx->save_for_backward({f.r, f.k, f.v, f.w, f.u, f.chunk_states});
      return {f.y.to(r.scalar_type()), f.s_final};
    }
#endif
    const Shape s{r.size(0), r.size(1), r.size(2), r.size(3)};
    const auto acc = accumulate_type(r);
    auto prepare = [&](const at::Tensor& x) { return x.to(acc).contiguous(); };
    at::Tensor rc = prepare(r), kc = prepare(k), vc = prepare(v), wc = prepare(w), uc = prepare(u),
               s0c = prepare(s0);
    at::Tensor y = at::empty_like(rc);
    at::Tensor s_final = at::empty({s.B, s.H, s.N, s.N}, rc.options());
    at::Tensor checkpoints =
        at::empty({s.B * s.H, (s.T + kChunk - 1) / kChunk, s.N, s.N}, rc.options());
    if (acc == at::kDouble)
      forward_kernel<double>(s, rc, kc, vc, wc, uc, s0c, y, s_final, checkpoints);
    else
      forward_kernel<float>(s, rc, kc, vc, wc, uc, s0c, y, s_final, checkpoints);
    ctx->save_for_backward({rc, kc, vc, wc, uc, checkpoints});
    return {y.to(r.scalar_type()), s_final};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto dtype = [&](const char* key) {
      return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
    };
    const auto input = dtype("input_dtype");
#ifdef PEFTKIT_WKV6_CUDA
    if (saved[0].is_cuda()) {
      std::vector<at::Tensor> g = cuda_backward(saved, grads[0], grads[1]);
      return {g[0].to(input),
              g[1].to(input),
              g[2].to(input),
              g[3].to(input),
              g[4].to(dtype("u_dtype")),
              g[5].to(dtype("s0_dtype"))};
    }
#endif
    const at::Tensor &r = saved[0], &k = saved[1], &v = saved[2], &w = saved[3], &u = saved[4],
                     &checkpoints = saved[5];
    const Shape s{r.size(0), r.size(1), r.size(2), r.size(3)};
    const auto acc = r.scalar_type();
    at::Tensor dy = grads[0].defined() ? grads[0].to(acc).contiguous() : at::Tensor();
    at::Tensor ds_final = grads[1].defined() ? grads[1].to(acc).contiguous() : at::Tensor();
    at::Tensor dr = at::empty_like(r), dk = at::empty_like(r), dv = at::empty_like(r),
               dw = at::empty_like(r);
    at::Tensor du = at::empty({s.B, s.H, s.N}, r.options());
    at::Tensor ds0 = at::empty({s.B, s.H, s.N, s.N}, r.options());
    if (acc == at::kDouble)
      backward_kernel<double>(s, r, k, v, w, u, checkpoints, dy, ds_final, dr, dk, dv, dw, du, ds0);
    else
      backward_kernel<float>(s, r, k, v, w, u, checkpoints, dy, ds_final, dr, dk, dv, dw, du, ds0);
    return {dr.to(input),
            dk.to(input),
            dv.to(input),
            dw.to(input),
            du.sum(0).to(dtype("u_dtype")),
            ds0.to(dtype("s0_dtype"))};
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> wkv6(const at::Tensor& r, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& w,
                                        const at::Tensor& u, const at::Tensor& s0) {
  TORCH_CHECK(r.dim() == 4, "wkv6: inputs must be [B, T, H, N], got ", r.sizes());
  TORCH_CHECK(r.size(1) > 0, "wkv6: T must be at least 1, got ", r.sizes());
  for (const at::Tensor* x : {&k, &v, &w})
    TORCH_CHECK(x->sizes() == r.sizes(), "wkv6: r, k, v and w must have shape ", r.sizes(),
                ", got ", x->sizes());
  TORCH_CHECK(u.sizes() == at::IntArrayRef({r.size(2), r.size(3)}),
              "wkv6: u must be [H, N] = ", at::IntArrayRef({r.size(2), r.size(3)}), ", got ",
              u.sizes());
  if (s0.defined())
    TORCH_CHECK(s0.sizes() == at::IntArrayRef({r.size(0), r.size(2), r.size(3), r.size(3)}),
                "wkv6: s0 must be [B, H, N, N] = ",
                at::IntArrayRef({r.size(0), r.size(2), r.size(3), r.size(3)}), ", got ",
                s0.sizes());
  if (!r.device().is_cpu()) {
#ifdef PEFTKIT_WKV6_CUDA
    const bool kernel =
        r.is_cuda() && cuda::wkv6_supports(r.size(3)) && r.scalar_type() != at::kDouble;
#else
    const bool kernel = false;
#endif
    if (!kernel) return wkv6_reference(r, k, v, w, u, s0);
  }
#ifdef PEFTKIT_WKV6_CUDA
  // Without a backward to follow, no autograd record.
  if (r.is_cuda() && !binding::needs_backward({&r, &k, &v, &w, &u, &s0})) {
    CudaForward f = cuda_forward(r, k, v, w, u, s0);
    return {f.y.to(r.scalar_type()), f.s_final};
  }
#endif
  // Autograd functions need defined inputs: no initial state means a zero one.
  const at::Tensor initial = s0.defined() ? s0
                                          : at::zeros({r.size(0), r.size(2), r.size(3), r.size(3)},
                                                      r.options().dtype(accumulate_type(r)));
  auto out = Wkv6Function::apply(r, k, v, w, u, initial);
  return {out[0], out[1]};
}

}  // namespace peftkit::kernels
