// WKV7 on the CPU (the exact recurrence, the CPU path of training and the oracle for GPU kernels)
// and its autograd binding, which runs the CUDA kernel (wkv7_cuda.cu) for CUDA tensors. The
// backward recomputes states from checkpoints taken every kChunk steps, so memory is
// B*H*(T/kChunk)*N*N instead of B*H*T*N*N.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "binding.hpp"
#include "wkv7/wkv7.hpp"
#ifdef PEFTKIT_WKV7_CUDA
#include "cuda_place_of.hpp"
#include "wkv7/wkv7_cuda.hpp"
#endif

namespace peftkit::kernels {
namespace {

using binding::accumulate_type;
using binding::output;

constexpr int64_t kChunk = 16;
constexpr double kDecayScale = 0.60653065971263342;  // e^-0.5

struct Shape {
  int64_t B, T, H, N;
};

// Pointers into one (b, h) slice of [B, T, H, N] tensors: element (t, n) is at t * H * N + n.
template <class Acc>
struct Head {
  const Acc *r, *z, *k, *v, *a, *b;
  int64_t stride;  // H * N
};

template <class Acc>
Acc decay_of(Acc z) {
  return std::exp(-static_cast<Acc>(kDecayScale) / (Acc(1) + std::exp(-z)));
}

// One step S <- S diag(d) + (S a) b^T + v k^T; writes y = S r when y is not null.
template <class Acc>
void step(Acc* S, int64_t N, const Acc* r, const Acc* z, const Acc* k, const Acc* v, const Acc* a,
          const Acc* b, Acc* y, Acc* d_scratch) {
  for (int64_t j = 0; j < N; ++j) d_scratch[j] = decay_of(z[j]);
  for (int64_t i = 0; i < N; ++i) {
    Acc* row = S + i * N;
    Acc sa = 0;
    for (int64_t j = 0; j < N; ++j) sa += row[j] * a[j];
    Acc out = 0;
    for (int64_t j = 0; j < N; ++j) {
      row[j] = row[j] * d_scratch[j] + sa * b[j] + v[i] * k[j];
      out += row[j] * r[j];
    }
    if (y) y[i] = out;
  }
}

template <class Acc>
void forward_kernel(const Shape& s, const at::Tensor& r, const at::Tensor& z, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& s0, at::Tensor& y, at::Tensor& s_final,
                    at::Tensor& checkpoints) {
  const int64_t N = s.N, HN = s.H * s.N, chunks = (s.T + kChunk - 1) / kChunk;
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> d(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / s.H, h = bh % s.H;
      const int64_t base = bi * s.T * HN + h * N;
      Acc* S = s_final.data_ptr<Acc>() + bh * N * N;
      std::copy_n(s0.data_ptr<Acc>() + bh * N * N, N * N, S);
      for (int64_t t = 0; t < s.T; ++t) {
        if (t % kChunk == 0)
          std::copy_n(S, N * N, checkpoints.data_ptr<Acc>() + (bh * chunks + t / kChunk) * N * N);
        const int64_t o = base + t * HN;
        step<Acc>(S, N, r.data_ptr<Acc>() + o, z.data_ptr<Acc>() + o, k.data_ptr<Acc>() + o,
                  v.data_ptr<Acc>() + o, a.data_ptr<Acc>() + o, b.data_ptr<Acc>() + o,
                  y.data_ptr<Acc>() + o, d.data());
      }
    }
  });
}

template <class Acc>
void backward_kernel(const Shape& s, const at::Tensor& r, const at::Tensor& z, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& checkpoints, const at::Tensor& dy,
                     const at::Tensor& ds_final, at::Tensor& dr, at::Tensor& dz, at::Tensor& dk,
                     at::Tensor& dv, at::Tensor& da, at::Tensor& db, at::Tensor& ds0) {
  const int64_t N = s.N, NN = N * N, HN = s.H * s.N, chunks = (s.T + kChunk - 1) / kChunk;
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> states((kChunk + 1) * NN), dS(NN), d(N), sa(N), dsa(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / s.H, h = bh % s.H;
      const int64_t base = bi * s.T * HN + h * N;
      if (ds_final.defined())
        std::copy_n(ds_final.data_ptr<Acc>() + bh * NN, NN, dS.data());
      else
        std::fill(dS.begin(), dS.end(), Acc(0));
      for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kChunk, t1 = std::min(s.T, t0 + kChunk);
        // Recompute S_{t0} .. S_{t1} of this chunk from its checkpoint.
        std::copy_n(checkpoints.data_ptr<Acc>() + (bh * chunks + c) * NN, NN, states.data());
        for (int64_t t = t0; t < t1; ++t) {
          Acc* next = states.data() + (t - t0 + 1) * NN;
          std::copy_n(states.data() + (t - t0) * NN, NN, next);
          const int64_t o = base + t * HN;
          step<Acc>(next, N, r.data_ptr<Acc>() + o, z.data_ptr<Acc>() + o, k.data_ptr<Acc>() + o,
                    v.data_ptr<Acc>() + o, a.data_ptr<Acc>() + o, b.data_ptr<Acc>() + o, nullptr,
                    d.data());
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t o = base + t * HN;
          const Acc *rt = r.data_ptr<Acc>() + o, *zt = z.data_ptr<Acc>() + o,
                    *kt = k.data_ptr<Acc>() + o, *vt = v.data_ptr<Acc>() + o,
                    *at_ = a.data_ptr<Acc>() + o, *bt = b.data_ptr<Acc>() + o;
          const Acc* dyt = dy.defined() ? dy.data_ptr<Acc>() + o : nullptr;
          const Acc* prev = states.data() + (t - t0) * NN;
          const Acc* cur = prev + NN;
          Acc *drt = dr.data_ptr<Acc>() + o, *dzt = dz.data_ptr<Acc>() + o,
              *dkt = dk.data_ptr<Acc>() + o, *dvt = dv.data_ptr<Acc>() + o,
              *dat = da.data_ptr<Acc>() + o, *dbt = db.data_ptr<Acc>() + o;
          // y = S_t r: dS += dy r^T, dr = S_t^T dy.
          for (int64_t j = 0; j < N; ++j) drt[j] = 0;
          if (dyt) {
            for (int64_t i = 0; i < N; ++i)
              for (int64_t j = 0; j < N; ++j) {
                dS[i * N + j] += dyt[i] * rt[j];
                drt[j] += cur[i * N + j] * dyt[i];
              }
          }
          for (int64_t j = 0; j < N; ++j) d[j] = decay_of(zt[j]);
          for (int64_t i = 0; i < N; ++i) {
            Acc acc = 0;
            for (int64_t j = 0; j < N; ++j) acc += prev[i * N + j] * at_[j];
            sa[i] = acc;
          }
          // S_t = S_{t-1} diag(d) + sa b^T + v k^T.
          for (int64_t j = 0; j < N; ++j) dkt[j] = dbt[j] = dzt[j] = dat[j] = 0;
          for (int64_t i = 0; i < N; ++i) {
            Acc dvi = 0, dsai = 0;
            for (int64_t j = 0; j < N; ++j) {
              const Acc g = dS[i * N + j];
              dvi += g * kt[j];
              dsai += g * bt[j];
              dkt[j] += g * vt[i];
              dbt[j] += g * sa[i];
              dzt[j] += g * prev[i * N + j];  // dL/dd_j for now
            }
            dvt[i] = dvi;
            dsa[i] = dsai;
          }
          for (int64_t i = 0; i < N; ++i)
            for (int64_t j = 0; j < N; ++j) {
              dat[j] += dsa[i] * prev[i * N + j];
              dS[i * N + j] = dS[i * N + j] * d[j] + dsa[i] * at_[j];
            }
          // d = exp(-c sigmoid(z)): dd/dz = -c d sigmoid(z) (1 - sigmoid(z)).
          for (int64_t j = 0; j < N; ++j) {
            const Acc sig = Acc(1) / (Acc(1) + std::exp(-zt[j]));
            dzt[j] *= -static_cast<Acc>(kDecayScale) * d[j] * sig * (Acc(1) - sig);
          }
        }
      }
      std::copy_n(dS.data(), NN, ds0.data_ptr<Acc>() + bh * NN);
    }
  });
}

// An input as the kernels read it: CUDA in bf16 or fp32, contiguous and aligned; CPU in the
// accumulation type.
at::Tensor kernel_input(const at::Tensor& x, const at::Tensor& r) {
#ifdef PEFTKIT_WKV7_CUDA
  if (r.is_cuda()) return binding::contiguous_aligned(x.to(binding::cuda_input_type(r)));
#endif
  return x.to(accumulate_type(r)).contiguous();
}

#ifdef PEFTKIT_WKV7_CUDA
using binding::cuda_type;

void check_cuda(const std::string& status) {
  TORCH_CHECK(status.empty(), "wkv7 CUDA kernel: ", status);
}

struct CudaForward {
  at::Tensor r, z, k, v, a, b;  // as the kernel read them
  at::Tensor y, s_final;        // y in the kernel's input dtype
  at::Tensor chunk_states, sa;  // for the backward; undefined without one
};

CudaForward cuda_forward(const at::Tensor& r, const at::Tensor& z, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& a, const at::Tensor& b,
                         const at::Tensor& s0, bool for_backward) {
  auto prepare = [&](const at::Tensor& x) { return kernel_input(x, r); };
  CudaForward f{prepare(r), prepare(z), prepare(k), prepare(v), prepare(a),
                prepare(b), {},         {},         {},         {}};
  const cuda::Wkv7Shape shape{r.size(0), r.size(1), r.size(2), r.size(3)};
  const auto f32 = f.r.options().dtype(at::kFloat);
  const at::Tensor initial = s0.defined() ? s0.to(at::kFloat).contiguous()
                                          : at::zeros({shape.B, shape.H, shape.N, shape.N}, f32);
  f.y = output(f.r.sizes(), f.r.options());
  f.s_final = output({shape.B, shape.H, shape.N, shape.N}, f32);
  if (for_backward) {
    f.chunk_states = output({shape.B * shape.H, cuda::wkv7_chunks(shape), shape.N, shape.N}, f32);
    f.sa = output(f.r.sizes(), f32);
  }
  at::Tensor scratch =
      at::empty({cuda::wkv7_forward_scratch_floats(cuda::place_of(r), cuda_type(f.r), shape)}, f32);
  check_cuda(cuda::wkv7_forward(
      cuda::place_of(r), cuda_type(f.r), shape, f.r.data_ptr(), f.z.data_ptr(), f.k.data_ptr(),
      f.v.data_ptr(), f.a.data_ptr(), f.b.data_ptr(), initial.data_ptr<float>(), f.y.data_ptr(),
      f.s_final.data_ptr<float>(), for_backward ? f.chunk_states.data_ptr<float>() : nullptr,
      for_backward ? f.sa.data_ptr<float>() : nullptr, scratch.data_ptr<float>()));
  return f;
}
#endif

// A forward whose backward follows: the inputs as the kernel read them, the outputs (y in r's
// dtype) and what the backward reads besides the inputs (CUDA: chunk states and sa; CPU: the
// checkpoints).
struct ForwardForBackward {
  std::vector<at::Tensor> inputs;  // r, z, k, v, a, b
  at::Tensor y, s_final;
  std::vector<at::Tensor> saved;
};

ForwardForBackward forward_for_backward(const at::Tensor& r, const at::Tensor& z,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& a, const at::Tensor& b,
                                        const at::Tensor& s0) {
#ifdef PEFTKIT_WKV7_CUDA
  if (r.is_cuda()) {
    CudaForward f = cuda_forward(r, z, k, v, a, b, s0, /*for_backward=*/true);
    return {
        {f.r, f.z, f.k, f.v, f.a, f.b}, f.y.to(r.scalar_type()), f.s_final, {f.chunk_states, f.sa}};
  }
#endif
  const Shape s{r.size(0), r.size(1), r.size(2), r.size(3)};
  ForwardForBackward f;
  for (const at::Tensor* x : {&r, &z, &k, &v, &a, &b}) f.inputs.push_back(kernel_input(*x, r));
  const at::Tensor s0c = kernel_input(s0, r);
  const at::Tensor &rc = f.inputs[0], &zc = f.inputs[1], &kc = f.inputs[2], &vc = f.inputs[3],
                   &ac = f.inputs[4], &bc = f.inputs[5];
  at::Tensor y = at::empty_like(rc);
  f.s_final = at::empty({s.B, s.H, s.N, s.N}, rc.options());
  at::Tensor checkpoints =
      at::empty({s.B * s.H, (s.T + kChunk - 1) / kChunk, s.N, s.N}, rc.options());
  if (rc.scalar_type() == at::kDouble)
    forward_kernel<double>(s, rc, zc, kc, vc, ac, bc, s0c, y, f.s_final, checkpoints);
  else
    forward_kernel<float>(s, rc, zc, kc, vc, ac, bc, s0c, y, f.s_final, checkpoints);
  f.y = y.to(r.scalar_type());
  f.saved = {checkpoints};
  return f;
}

std::atomic<int64_t> memos_taken{0};

// Takes a memo's forward for a recomputation with inputs r .. b (the memo is left empty).
ForwardForBackward take(Wkv7Memo& memo, const at::Tensor& r, const at::Tensor& z,
                        const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                        const at::Tensor& b) {
  TORCH_CHECK(r.sizes() == at::IntArrayRef(memo.sizes) && r.scalar_type() == memo.dtype &&
                  r.device() == memo.device,
              "wkv7: the kept forward was of ", at::IntArrayRef(memo.sizes), " ", memo.dtype,
              " inputs on ", memo.device, ", the recomputation's are ", r.sizes(), " ",
              r.scalar_type(), " on ", r.device());
  ForwardForBackward f;
  for (const at::Tensor* x : {&r, &z, &k, &v, &a, &b}) f.inputs.push_back(kernel_input(*x, r));
  f.y = std::move(memo.y);
  f.s_final = std::move(memo.s_final);
  f.saved = std::move(memo.saved);
  memo = Wkv7Memo{};
  ++memos_taken;
  return f;
}

class Wkv7Function : public torch::autograd::Function<Wkv7Function> {
 public:
  // memo: null, or filled by the same call without a backward (taken here instead of running).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor r,
                                                at::Tensor z, at::Tensor k, at::Tensor v,
                                                at::Tensor a, at::Tensor b, at::Tensor s0,
                                                Wkv7Memo* memo) {
    ForwardForBackward f = memo && memo->filled() ? take(*memo, r, z, k, v, a, b)
                                                  : forward_for_backward(r, z, k, v, a, b, s0);
    std::vector<at::Tensor> saves = f.inputs;
    saves.insert(saves.end(), f.saved.begin(), f.saved.end());
    ctx->save_for_backward(saves);
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(r.scalar_type());
    ctx->saved_data["s0_dtype"] = static_cast<int64_t>(s0.scalar_type());
    return {f.y, f.s_final};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    // CPU: saved[6] holds the checkpoints; CUDA: the chunk states and saved[7] sa.
    const at::Tensor &r = saved[0], &z = saved[1], &k = saved[2], &v = saved[3], &a = saved[4],
                     &b = saved[5], &checkpoints = saved[6];
    const Shape s{r.size(0), r.size(1), r.size(2), r.size(3)};
    const auto input_dtype = static_cast<at::ScalarType>(ctx->saved_data["input_dtype"].toInt());
    const auto s0_dtype = static_cast<at::ScalarType>(ctx->saved_data["s0_dtype"].toInt());
#ifdef PEFTKIT_WKV7_CUDA
    if (r.is_cuda()) {
      // dy and the input gradients in the kernels' input dtype (r as saved): for bf16 inputs dy
      // arrives in bf16 (y's dtype) and each gradient is rounded once, in the kernel.
      const auto f32 = r.options().dtype(at::kFloat);
      const cuda::Wkv7Shape shape{s.B, s.T, s.H, s.N};
      at::Tensor dy = grads[0].defined() ? binding::contiguous_aligned(grads[0].to(r.scalar_type()))
                                         : at::Tensor();
      at::Tensor ds_final =
          grads[1].defined() ? grads[1].to(at::kFloat).contiguous() : at::Tensor();
      at::Tensor dr = output(r.sizes(), r.options()), dz = output(r.sizes(), r.options()),
                 dk = output(r.sizes(), r.options()), dv = output(r.sizes(), r.options()),
                 da = output(r.sizes(), r.options()), db = output(r.sizes(), r.options());
      at::Tensor ds0 = output({s.B, s.H, s.N, s.N}, f32);
      at::Tensor scratch = at::empty(
          {cuda::wkv7_backward_scratch_floats(cuda::place_of(r), cuda_type(r), shape)}, f32);
      check_cuda(cuda::wkv7_backward(
          cuda::place_of(r), cuda_type(r), shape, r.data_ptr(), z.data_ptr(), k.data_ptr(),
          v.data_ptr(), a.data_ptr(), b.data_ptr(), saved[6].data_ptr<float>(),
          saved[7].data_ptr<float>(), dy.defined() ? dy.data_ptr() : nullptr,
          ds_final.defined() ? ds_final.data_ptr<float>() : nullptr, dr.data_ptr(), dz.data_ptr(),
          dk.data_ptr(), dv.data_ptr(), da.data_ptr(), db.data_ptr(), ds0.data_ptr<float>(),
          scratch.data_ptr<float>()));
      return {dr.to(input_dtype), dz.to(input_dtype), dk.to(input_dtype),
              dv.to(input_dtype), da.to(input_dtype), db.to(input_dtype),
              ds0.to(s0_dtype),   at::Tensor()};  // none for memo
    }
#endif
    const auto acc = r.scalar_type();
    at::Tensor dy = grads[0].defined() ? grads[0].to(acc).contiguous() : at::Tensor();
    at::Tensor ds_final = grads[1].defined() ? grads[1].to(acc).contiguous() : at::Tensor();
    at::Tensor dr = at::empty_like(r), dz = at::empty_like(r), dk = at::empty_like(r),
               dv = at::empty_like(r), da = at::empty_like(r), db = at::empty_like(r);
    at::Tensor ds0 = at::empty({s.B, s.H, s.N, s.N}, r.options());
    if (acc == at::kDouble)
      backward_kernel<double>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da,
                              db, ds0);
    else
      backward_kernel<float>(s, r, z, k, v, a, b, checkpoints, dy, ds_final, dr, dz, dk, dv, da, db,
                             ds0);
    return {dr.to(input_dtype), dz.to(input_dtype), dk.to(input_dtype),
            dv.to(input_dtype), da.to(input_dtype), db.to(input_dtype),
            ds0.to(s0_dtype),   at::Tensor()};  // none for memo
  }
};

}  // namespace

int64_t wkv7_memos_taken() { return memos_taken; }

void use_wkv7_chunked_form(cuda::Wkv7ChunkedForm form) {
#ifdef PEFTKIT_WKV7_CUDA
  cuda::select_wkv7_chunked_form(form);
#else
  (void)form;
#endif
}

at::Tensor wkv7_decay(const at::Tensor& z) { return at::exp(-kDecayScale * at::sigmoid(z)); }

std::tuple<at::Tensor, at::Tensor> wkv7(const at::Tensor& r, const at::Tensor& z,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& a, const at::Tensor& b,
                                        const at::Tensor& s0, Wkv7Memo* memo) {
  TORCH_CHECK(r.dim() == 4, "wkv7: inputs must be [B, T, H, N], got ", r.sizes());
  TORCH_CHECK(r.size(1) > 0, "wkv7: T must be at least 1, got ", r.sizes());
  for (const at::Tensor* x : {&z, &k, &v, &a, &b})
    TORCH_CHECK(x->sizes() == r.sizes(), "wkv7: all inputs must have shape ", r.sizes(), ", got ",
                x->sizes());
  if (s0.defined())
    TORCH_CHECK(s0.sizes() == at::IntArrayRef({r.size(0), r.size(2), r.size(3), r.size(3)}),
                "wkv7: s0 must be [B, H, N, N] = ",
                at::IntArrayRef({r.size(0), r.size(2), r.size(3), r.size(3)}), ", got ",
                s0.sizes());
  if (!r.device().is_cpu()) {
#ifdef PEFTKIT_WKV7_CUDA
    const bool kernel =
        r.is_cuda() && cuda::wkv7_supports(r.size(3)) && r.scalar_type() != at::kDouble;
#else
    const bool kernel = false;
#endif
    if (!kernel) return wkv7_reference(r, z, k, v, a, b, s0);
  }
  // Autograd functions need defined inputs: no initial state means a zero one.
  auto initial = [&] {
    return s0.defined() ? s0
                        : at::zeros({r.size(0), r.size(2), r.size(3), r.size(3)},
                                    r.options().dtype(accumulate_type(r)));
  };
  const bool backward = binding::needs_backward({&r, &z, &k, &v, &a, &b, &s0});
  if (memo && !backward) {
    ForwardForBackward f = forward_for_backward(r, z, k, v, a, b, initial());
    memo->y = f.y;
    // A copy: the caller's final state may become an autograd output of its own, and the
    // recomputation makes the memo's one an output of wkv7's backward node.
    memo->s_final = f.s_final.clone();
    memo->saved = std::move(f.saved);
    memo->sizes = r.sizes().vec();
    memo->dtype = r.scalar_type();
    memo->device = r.device();
    return {f.y, f.s_final};
  }
#ifdef PEFTKIT_WKV7_CUDA
  // Without a backward to follow, skip what only the backward reads.
  if (r.is_cuda() && !backward) {
    CudaForward f = cuda_forward(r, z, k, v, a, b, s0, /*for_backward=*/false);
    return {f.y.to(r.scalar_type()), f.s_final};
  }
#endif
  auto out = Wkv7Function::apply(r, z, k, v, a, b, initial(), memo);
  return {out[0], out[1]};
}

}  // namespace peftkit::kernels
