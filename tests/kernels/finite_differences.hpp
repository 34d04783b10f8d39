// Central finite differences of a scalar loss with respect to every element of a float64 tensor:
// the oracle for the kernels' hand-written backward passes.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <functional>

namespace peftkit::testing {

// d loss / d x, element by element, with steps of h; x is restored afterwards.
inline at::Tensor central_differences(const std::function<at::Tensor()>& loss, at::Tensor& x,
                                      double h = 1e-6) {
  at::NoGradGuard no_grad;
  at::Tensor numeric = at::zeros_like(x);
  at::Tensor flat = x.view({-1});
  for (int64_t e = 0; e < flat.numel(); ++e) {
    const double saved = flat[e].item<double>();
    flat[e].fill_(saved + h);
    const double plus = loss().item<double>();
    flat[e].fill_(saved - h);
    const double minus = loss().item<double>();
    flat[e].fill_(saved);
    numeric.view({-1})[e] = (plus - minus) / (2 * h);
  }
  return numeric;
}

}  // namespace peftkit::testing
