// The fused ops: tensor-op references, and autograd bindings of the CUDA kernels.
#include "fused/fused.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "fused/fused_cuda.hpp"  // kMaxMixes, also without device code
#ifdef PEFTKIT_FUSED_CUDA
#include "cuda_place_of.hpp"
#endif

namespace peftkit::kernels {

std::vector<at::Tensor> token_shift_mix_reference(const at::Tensor& x, const at::Tensor& shift,
                                                  const at::Tensor& mixes) {
  const int64_t T = x.size(1), C = x.size(2);
  const at::Tensor previous =
      at::cat({shift.unsqueeze(1).to(x.scalar_type()), x.slice(1, 0, T - 1)}, 1);
  const at::Tensor delta = previous - x;
  return (x.unsqueeze(0) + delta.unsqueeze(0) * mixes.reshape({-1, 1, 1, C}))
      .to(x.scalar_type())
      .unbind(0);
}

KkAb kk_ab_reference(const at::Tensor& k, const at::Tensor& a, const at::Tensor& k_k,
                     const at::Tensor& k_a, int64_t heads) {
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  const auto per_head = std::vector<int64_t>{B, T, heads, C / heads};
  at::Tensor kk = (k * k_k.reshape({C})).view(per_head);
  kk = kk / at::clamp_min(at::linalg_vector_norm(kk, 2, {-1}, true), 1e-12);
  const at::Tensor key = k * (1 + (a - 1) * k_a.reshape({C}));
  return {key.to(k.scalar_type()), (-kk).reshape({B, T, C}).to(k.scalar_type()),
          (kk * a.view(per_head)).reshape({B, T, C}).to(k.scalar_type())};
}

at::Tensor norm_bonus_gate_reference(const at::Tensor& y, const at::Tensor& r, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& g,
                                     const at::Tensor& ln_w, const at::Tensor& ln_b,
                                     const at::Tensor& r_k, int64_t heads, double eps) {
  const int64_t B = r.size(0), T = r.size(1), C = r.size(2);
  const auto per_head = std::vector<int64_t>{B, T, heads, C / heads};
  const at::Tensor normed =
      at::group_norm(y.reshape({B * T, C}), heads, ln_w.reshape({C}), ln_b.reshape({C}), eps)
          .view({B, T, C});
  const at::Tensor bonus =
      (r * k * r_k.reshape({C})).view(per_head).sum(-1, true) * v.view(per_head);
  return ((normed + bonus.reshape({B, T, C})) * g).to(r.scalar_type());
}

at::Tensor relu_square_reference(const at::Tensor& x) { return at::relu(x).square(); }

#ifdef PEFTKIT_FUSED_CUDA
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

cuda::FusedType fused_type(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? cuda::FusedType::kBFloat16 : cuda::FusedType::kFloat32;
}
void check(const std::string& status) {
  TORCH_CHECK(status.empty(), "fused CUDA kernel: ", status);
}
// Activations as the kernels read them (x's dtype, contiguous); parameters as fp32.
at::Tensor like(const at::Tensor& t, const at::Tensor& x) {
  return t.to(x.scalar_type()).contiguous();
}
at::Tensor fp32(const at::Tensor& t) { return t.to(at::kFloat).contiguous().view({-1}); }
const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
at::Tensor grad_like(const at::Tensor& grad, const at::Tensor& x) {
  return grad.defined() ? like(grad, x) : at::Tensor();
}
at::Tensor fp32_buffer(at::IntArrayRef sizes, const at::Tensor& x) {
  return at::empty(sizes, x.options().dtype(at::kFloat));
}
// The partial sums of parameter input `input`'s gradient, none for a frozen parameter (the kernels
// then skip them, and autograd gets no gradient for it).
at::Tensor partials_buffer(AutogradContext* ctx, size_t input, at::IntArrayRef sizes,
                           const at::Tensor& x) {
  return ctx->needs_input_grad(input) ? fp32_buffer(sizes, x) : at::Tensor();
}
float* partials_ptr(at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
// The parameter's gradient from its partial sums, in its shape and dtype.
at::Tensor summed(const at::Tensor& partials, const std::vector<int64_t>& sizes,
                  at::ScalarType dtype) {
  return partials.defined() ? partials.sum(0).view(sizes).to(dtype) : at::Tensor();
}

class TokenShiftMix : public torch::autograd::Function<TokenShiftMix> {
 public:
  static variable_list forward(AutogradContext* ctx, at::Tensor x, at::Tensor shift,
                               at::Tensor mixes) {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), M = mixes.numel() / C;
    at::Tensor xc = x.contiguous(), sc = like(shift, x), mc = fp32(mixes);
    variable_list out;
    std::vector<void*> planes;
    for (int64_t m = 0; m < M; ++m) {
      out.push_back(at::empty_like(xc));
      planes.push_back(out.back().data_ptr());
    }
    check(cuda::token_shift_mix_forward(cuda::place_of(x), fused_type(x), B, T, C, M, xc.data_ptr(),
                                        sc.data_ptr(), mc.data_ptr<float>(), planes.data()));
    ctx->save_for_backward({xc, sc, mc});
    ctx->saved_data["shift_dtype"] = static_cast<int64_t>(shift.scalar_type());
    ctx->saved_data["mix_dtype"] = static_cast<int64_t>(mixes.scalar_type());
    ctx->saved_data["mix_sizes"] = mixes.sizes().vec();
    ctx->set_materialize_grads(false);  // an unused mix passes null, not a tensor of zeros
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &shift = saved[1], &mixes = saved[2];
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), M = mixes.numel() / C;
    std::vector<at::Tensor> dout;
    std::vector<const void*> planes;
    for (int64_t m = 0; m < M; ++m) {
      dout.push_back(grad_like(grads[m], x));
      planes.push_back(ptr_or_null(dout.back()));
    }
    // Every sequence's t = 0 writes its row of dshift.
    at::Tensor dx = at::empty_like(x), dshift = fp32_buffer({B, C}, x);
    at::Tensor partials = partials_buffer(ctx, 2, {cuda::fused_partials(B * T), M, C}, x);
    check(cuda::token_shift_mix_backward(cuda::place_of(x), fused_type(x), B, T, C, M, x.data_ptr(),
                                         shift.data_ptr(), mixes.data_ptr<float>(), planes.data(),
                                         dx.data_ptr(), dshift.data_ptr<float>(),
                                         partials_ptr(partials)));
    auto dtype = [&](const char* key) {
      return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
    };
    return {dx, dshift.to(dtype("shift_dtype")),
            summed(partials, ctx->saved_data["mix_sizes"].toIntVector(), dtype("mix_dtype"))};
  }
};

class KkAbFunction : public torch::autograd::Function<KkAbFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::Tensor k, at::Tensor a, at::Tensor k_k,
                               at::Tensor k_a, int64_t heads) {
    const int64_t rows = k.size(0) * k.size(1), C = k.size(2);
    at::Tensor kc = k.contiguous(), ac = like(a, k), kkc = fp32(k_k), kac = fp32(k_a);
    at::Tensor k_out = at::empty_like(kc), a_out = at::empty_like(kc), b_out = at::empty_like(kc);
    check(cuda::kk_ab_forward(cuda::place_of(k), fused_type(k), rows, heads, C / heads,
                              kc.data_ptr(), ac.data_ptr(), kkc.data_ptr<float>(),
                              kac.data_ptr<float>(), k_out.data_ptr(), a_out.data_ptr(),
                              b_out.data_ptr()));
    ctx->save_for_backward({kc, ac, kkc, kac});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["dtypes"] = std::vector<int64_t>{static_cast<int64_t>(a.scalar_type()),
                                                     static_cast<int64_t>(k_k.scalar_type()),
                                                     static_cast<int64_t>(k_a.scalar_type())};
    ctx->saved_data["param_sizes"] = k_k.sizes().vec();
    ctx->saved_data["k_a_sizes"] = k_a.sizes().vec();
    ctx->set_materialize_grads(false);  // an unused output passes null, not a tensor of zeros
    return {k_out, a_out, b_out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &k = saved[0], &a = saved[1], &k_k = saved[2], &k_a = saved[3];
    const int64_t heads = ctx->saved_data["heads"].toInt(), rows = k.size(0) * k.size(1),
                  C = k.size(2);
    const at::Tensor dk_out = grad_like(grads[0], k), da_out = grad_like(grads[1], k),
                     db_out = grad_like(grads[2], k);
    at::Tensor dk = at::empty_like(k), da = at::empty_like(k);
    const int64_t partials = cuda::fused_head_partials(rows);
    at::Tensor dk_k = partials_buffer(ctx, 2, {partials, C}, k),
               dk_a = partials_buffer(ctx, 3, {partials, C}, k);
    check(cuda::kk_ab_backward(
        cuda::place_of(k), fused_type(k), rows, heads, C / heads, k.data_ptr(), a.data_ptr(),
        k_k.data_ptr<float>(), k_a.data_ptr<float>(), ptr_or_null(dk_out), ptr_or_null(da_out),
        ptr_or_null(db_out), dk.data_ptr(), da.data_ptr(), partials_ptr(dk_k), partials_ptr(dk_a)));
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    auto dtype = [&](int i) { return static_cast<at::ScalarType>(dtypes[i]); };
    return {dk, da.to(dtype(0)),
            summed(dk_k, ctx->saved_data["param_sizes"].toIntVector(), dtype(1)),
            summed(dk_a, ctx->saved_data["k_a_sizes"].toIntVector(), dtype(2)), at::Tensor()};
  }
};

class NormBonusGate : public torch::autograd::Function<NormBonusGate> {
 public:
  static variable_list forward(AutogradContext* ctx, at::Tensor y, at::Tensor r, at::Tensor k,
                               at::Tensor v, at::Tensor g, at::Tensor ln_w, at::Tensor ln_b,
                               at::Tensor r_k, int64_t heads, double eps) {
    const int64_t rows = r.size(0) * r.size(1), C = r.size(2);
    at::Tensor rc = r.contiguous(), yc = like(y, r).view(r.sizes()), kc = like(k, r),
               vc = like(v, r), gc = like(g, r);
    at::Tensor wc = fp32(ln_w), bc = fp32(ln_b), rkc = fp32(r_k);
    at::Tensor out = at::empty_like(rc);
    check(cuda::norm_bonus_gate_forward(
        cuda::place_of(r), fused_type(r), rows, heads, C / heads, eps, yc.data_ptr(), rc.data_ptr(),
        kc.data_ptr(), vc.data_ptr(), gc.data_ptr(), wc.data_ptr<float>(), bc.data_ptr<float>(),
        rkc.data_ptr<float>(), out.data_ptr()));
    ctx->save_for_backward({yc, rc, kc, vc, gc, wc, bc, rkc});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["eps"] = eps;
    std::vector<int64_t> dtypes;
    for (const at::Tensor* t : {&y, &k, &v, &g, &ln_w, &ln_b, &r_k})
      dtypes.push_back(static_cast<int64_t>(t->scalar_type()));
    ctx->saved_data["dtypes"] = dtypes;
    ctx->saved_data["y_sizes"] = y.sizes().vec();
    ctx->saved_data["w_sizes"] = ln_w.sizes().vec();
    ctx->saved_data["b_sizes"] = ln_b.sizes().vec();
    ctx->saved_data["r_k_sizes"] = r_k.sizes().vec();
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &y = s[0], &r = s[1], &k = s[2], &v = s[3], &g = s[4], &w = s[5], &b = s[6],
                     &r_k = s[7];
    const int64_t heads = ctx->saved_data["heads"].toInt(), rows = r.size(0) * r.size(1),
                  C = r.size(2);
    const at::Tensor dout = like(grads[0], r);
    at::Tensor dy = at::empty_like(r), dr = at::empty_like(r), dk = at::empty_like(r),
               dv = at::empty_like(r), dg = at::empty_like(r);
    const int64_t partials = cuda::fused_head_partials(rows);
    at::Tensor dw = partials_buffer(ctx, 5, {partials, C}, r),
               db = partials_buffer(ctx, 6, {partials, C}, r),
               drk = partials_buffer(ctx, 7, {partials, C}, r);
    check(cuda::norm_bonus_gate_backward(
        cuda::place_of(r), fused_type(r), rows, heads, C / heads, ctx->saved_data["eps"].toDouble(),
        y.data_ptr(), r.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), w.data_ptr<float>(),
        b.data_ptr<float>(), r_k.data_ptr<float>(), dout.data_ptr(), dy.data_ptr(), dr.data_ptr(),
        dk.data_ptr(), dv.data_ptr(), dg.data_ptr(), partials_ptr(dw), partials_ptr(db),
        partials_ptr(drk)));
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    auto dtype = [&](int i) { return static_cast<at::ScalarType>(dtypes[i]); };
    auto sizes = [&](const char* key) { return ctx->saved_data[key].toIntVector(); };
    return {dy.view(sizes("y_sizes")).to(dtype(0)),
            dr,
            dk.to(dtype(1)),
            dv.to(dtype(2)),
            dg.to(dtype(3)),
            summed(dw, sizes("w_sizes"), dtype(4)),
            summed(db, sizes("b_sizes"), dtype(5)),
            summed(drk, sizes("r_k_sizes"), dtype(6)),
            at::Tensor(),
            at::Tensor()};
  }
};

class ReluSquare : public torch::autograd::Function<ReluSquare> {
 public:
  static variable_list forward(AutogradContext* ctx, at::Tensor x) {
    at::Tensor xc = x.contiguous(), out = at::empty_like(xc);
    check(cuda::relu_square_forward(cuda::place_of(x), fused_type(x), x.numel(), xc.data_ptr(),
                                    out.data_ptr()));
    ctx->save_for_backward({xc});
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor dout = like(grads[0], x);
    at::Tensor dx = at::empty_like(x);
    check(cuda::relu_square_backward(cuda::place_of(x), fused_type(x), x.numel(), x.data_ptr(),
                                     dout.data_ptr(), dx.data_ptr()));
    return {dx};
  }
};

bool kernel_dtype(const at::Tensor& x) {
  return x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat);
}
bool kernel_head_size(int64_t n) { return n == 32 || n == 64 || n == 128 || n == 256; }

}  // namespace
#endif

std::vector<at::Tensor> token_shift_mix(const at::Tensor& x, const at::Tensor& shift,
                                        const at::Tensor& mixes) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) > 0, "token_shift_mix: x must be [B, T>0, C], got ",
              x.sizes());
  TORCH_CHECK(shift.numel() == x.size(0) * x.size(2), "token_shift_mix: shift must be [B, C], got ",
              shift.sizes());
  TORCH_CHECK(mixes.numel() > 0 && mixes.numel() % x.size(2) == 0 &&
                  mixes.numel() / x.size(2) <= cuda::kMaxMixes,
              "token_shift_mix: mixes must be [1 <= M <= ", cuda::kMaxMixes, ", C], got ",
              mixes.sizes());
#ifdef PEFTKIT_FUSED_CUDA
  if (kernel_dtype(x)) return TokenShiftMix::apply(x, shift.reshape({x.size(0), x.size(2)}), mixes);
#endif
  return token_shift_mix_reference(x, shift, mixes);
}

KkAb kk_ab(const at::Tensor& k, const at::Tensor& a, const at::Tensor& k_k, const at::Tensor& k_a,
           int64_t heads) {
  TORCH_CHECK(k.dim() == 3 && k.size(2) % heads == 0 && a.sizes() == k.sizes(),
              "kk_ab: k and a must be [B, T, H*N], got ", k.sizes(), " and ", a.sizes());
#ifdef PEFTKIT_FUSED_CUDA
  if (kernel_dtype(k) && kernel_head_size(k.size(2) / heads)) {
    auto out = KkAbFunction::apply(k, a, k_k, k_a, heads);
    return {out[0], out[1], out[2]};
  }
#endif
  return kk_ab_reference(k, a, k_k, k_a, heads);
}

at::Tensor norm_bonus_gate(const at::Tensor& y, const at::Tensor& r, const at::Tensor& k,
                           const at::Tensor& v, const at::Tensor& g, const at::Tensor& ln_w,
                           const at::Tensor& ln_b, const at::Tensor& r_k, int64_t heads,
                           double eps) {
  TORCH_CHECK(r.dim() == 3 && r.size(2) % heads == 0 && y.numel() == r.numel() &&
                  k.sizes() == r.sizes() && v.sizes() == r.sizes() && g.sizes() == r.sizes(),
              "norm_bonus_gate: y, r, k, v, g must be [B, T, H*N], got r ", r.sizes());
#ifdef PEFTKIT_FUSED_CUDA
  if (kernel_dtype(r) && kernel_head_size(r.size(2) / heads))
    return NormBonusGate::apply(y, r, k, v, g, ln_w, ln_b, r_k, heads, eps)[0];
#endif
  return norm_bonus_gate_reference(y, r, k, v, g, ln_w, ln_b, r_k, heads, eps);
}

at::Tensor relu_square(const at::Tensor& x) {
#ifdef PEFTKIT_FUSED_CUDA
  if (kernel_dtype(x)) return ReluSquare::apply(x)[0];
#endif
  return relu_square_reference(x);
}

}  // namespace peftkit::kernels
