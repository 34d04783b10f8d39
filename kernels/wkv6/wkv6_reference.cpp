// WKV6 with tensor operations, one time step at a time: runs on any device, and autograd gives its
// gradients. The GPU path until a CUDA kernel exists, and a cross-check of the CPU kernel.
#include <ATen/ATen.h>

#include "wkv6/wkv6.hpp"

namespace peftkit::kernels {

std::tuple<at::Tensor, at::Tensor> wkv6_reference(const at::Tensor& r, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& w,
                                                  const at::Tensor& u, const at::Tensor& s0) {
  const auto acc = r.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  at::Tensor S = s0.defined() ? s0.to(acc) : at::zeros({B, H, N, N}, r.options().dtype(acc));
  const at::Tensor d = at::exp(-at::exp(w.to(acc)));
  const at::Tensor bonus = u.to(acc);  // [H, N]
  std::vector<at::Tensor> ys;
  ys.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    auto at_t = [&](const at::Tensor& x) { return x.select(1, t).to(acc); };  // [B, H, N]
    const at::Tensor rt = at_t(r), kt = at_t(k), vt = at_t(v);
    // y = S_{t-1} r + v (u k . r): the pre-update state plus the bonus of the current token.
    const at::Tensor bonus_dot = (bonus * kt * rt).sum(-1, /*keepdim=*/true);  // [B, H, 1]
    ys.push_back(at::matmul(S, rt.unsqueeze(-1)).squeeze(-1) + vt * bonus_dot);
    S = S * d.select(1, t).unsqueeze(-2) + vt.unsqueeze(-1) * kt.unsqueeze(-2);
  }
  return {at::stack(ys, 1).to(r.scalar_type()), S};
}

}  // namespace peftkit::kernels
