// WKV7 with tensor operations, one time step at a time: runs on any device, and autograd gives
// its gradients. It is the GPU path until the chunked CUDA kernel exists, and a cross-check of
// the CPU kernel.
#include <ATen/ATen.h>

#include "wkv7/wkv7.hpp"

namespace peftkit::kernels {

std::tuple<at::Tensor, at::Tensor> wkv7_reference(const at::Tensor& r, const at::Tensor& z,
                                                  const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& a, const at::Tensor& b,
                                                  const at::Tensor& s0) {
  const auto acc = r.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  at::Tensor S = s0.defined() ? s0.to(acc) : at::zeros({B, H, N, N}, r.options().dtype(acc));
  const at::Tensor d = wkv7_decay(z.to(acc));
  std::vector<at::Tensor> ys;
  ys.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    auto at_t = [&](const at::Tensor& x) { return x.select(1, t).to(acc); };  // [B, H, N]
    const at::Tensor sa = at::matmul(S, at_t(a).unsqueeze(-1));               // S a, [B, H, N, 1]
    S = S * d.select(1, t).unsqueeze(-2) + sa * at_t(b).unsqueeze(-2) +
        at_t(v).unsqueeze(-1) * at_t(k).unsqueeze(-2);
    ys.push_back(at::matmul(S, at_t(r).unsqueeze(-1)).squeeze(-1));
  }
  return {at::stack(ys, 1).to(r.scalar_type()), S};
}

}  // namespace peftkit::kernels
